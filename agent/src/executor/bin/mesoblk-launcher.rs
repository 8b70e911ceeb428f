//! `mesoblk-launcher`: the helper the agent's command executor starts for every task. See
//! `mesoblk_agent::executor::launcher` for what it does and the protocol it speaks.

fn main() {
    std::process::exit(mesoblk_agent::executor::launcher::main());
}
