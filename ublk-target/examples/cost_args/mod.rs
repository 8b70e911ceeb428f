//! The command line shared by the per-request cost examples: `[MODE|all] [N]`.

/// The modes to run (every one of `modes` for none or `all`) and N (default 2,000,000); exits
/// with a one-line error and status 2 on anything else.
pub(crate) fn parse(modes: &[&'static str]) -> (Vec<&'static str>, u32) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chosen = match args.first().map(String::as_str) {
        None | Some("all") => modes.to_vec(),
        Some(m) => match modes.iter().find(|known| **known == m) {
            Some(known) => vec![*known],
            None => fail(&format!("unknown mode {m}; modes: all {}", modes.join(" "))),
        },
    };
    let n = match args.get(1).map(|s| s.parse::<u32>()) {
        None => 2_000_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => fail("N must be a positive integer"),
    };
    (chosen, n)
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}
