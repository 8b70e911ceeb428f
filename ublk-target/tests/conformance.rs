//! One conformance suite, run against every backend (the cache tier in every mode included),
//! plus a differential property test that drives random request sequences through each
//! data-storing backend and through a plain in-memory reference, comparing every read byte for
//! byte.
//!
//! Kernel-free: the file backend runs on a private io_uring (`BlockingRing`), the same SQE
//! mapping the ublk queue threads use. Buffers are page-aligned because the file backend uses
//! O_DIRECT where the file system allows it, exactly as buffers from the ublk driver are.

use std::sync::Arc;

use libublk::helpers::IoBuf;
use proptest::prelude::*;
use ublk_target::backend::file::DirectIo;
use ublk_target::backend::{Backend, FileBackend, FileStore, NullBackend, RamBackend};
use ublk_target::cache::{self, CacheConfig, CacheMode, CachedBackend};
use ublk_target::qos::ManualClock;
use ublk_target::sys::ring::BlockingRing;

const DEVICE_BYTES: u64 = 4 << 20;
const BLOCK: usize = 4096;

fn aligned(len: usize, fill: u8) -> IoBuf<u8> {
    let mut buf = IoBuf::<u8>::new(len.max(BLOCK));
    buf.as_mut_slice().fill(fill);
    buf
}

fn read<B: Backend>(backend: &B, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = aligned(len, 0xAA);
    smol::block_on(backend.read(offset, &mut buf.as_mut_slice()[..len])).expect("read");
    buf.as_slice()[..len].to_vec()
}

fn write<B: Backend>(backend: &B, offset: u64, data: &[u8], fua: bool) {
    let mut buf = aligned(data.len(), 0);
    buf.as_mut_slice()[..data.len()].copy_from_slice(data);
    smol::block_on(backend.write(offset, &buf.as_slice()[..data.len()], fua)).expect("write");
}

fn filled(len: usize, byte: u8) -> Vec<u8> {
    vec![byte; len]
}

/// A backend under test, with the temporary file that backs it (if any) kept alive.
struct Subject<B> {
    backend: B,
    _file: Option<tempfile::NamedTempFile>,
}

fn file_subject(direct: DirectIo) -> Subject<FileBackend<BlockingRing>> {
    let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp file");
    file.as_file()
        .set_len(DEVICE_BYTES)
        .expect("size temp file");
    let store = FileStore::open(file.path(), Some(DEVICE_BYTES), direct).expect("open store");
    Subject {
        backend: FileBackend::new(Arc::new(store), BlockingRing::new().expect("ring")),
        _file: Some(file),
    }
}

fn ram_subject() -> Subject<RamBackend> {
    Subject {
        backend: RamBackend::new(DEVICE_BYTES),
        _file: None,
    }
}

/// A cache over `backing` in a freshly formatted `store`. `journal_blocks` shrinks the journal
/// so small stores still have room for data.
fn cached<B: Backend, C: Backend>(
    backing: B,
    store: C,
    mode: CacheMode,
    journal_blocks: Option<u64>,
) -> CachedBackend<B, C> {
    smol::block_on(cache::format(&store, backing.size(), journal_blocks)).expect("format cache");
    let config = CacheConfig {
        mode,
        sequential_cutoff: 512 << 10,
        ..CacheConfig::default()
    };
    let shared = smol::block_on(cache::open(
        &backing,
        &store,
        &config,
        Arc::new(ManualClock::new()),
    ))
    .expect("open cache");
    CachedBackend::new(shared, backing, store)
}

/// A cache of 54 slots in front of a 1024-block RAM disk: evictions and bypasses all the time.
fn small_cached_ram(mode: CacheMode) -> CachedBackend<RamBackend, RamBackend> {
    cached(
        RamBackend::new(DEVICE_BYTES),
        RamBackend::new(64 * BLOCK as u64),
        mode,
        Some(4),
    )
}

// ---- the conformance checks -------------------------------------------------------------

fn check_reports_its_geometry<B: Backend>(b: &B) {
    assert_eq!(b.size(), DEVICE_BYTES);
    let caps = b.capabilities();
    assert!(caps.logical_block_size.is_power_of_two());
    assert!((512..=4096).contains(&caps.logical_block_size));
}

fn check_fresh_device_reads_zeroes<B: Backend>(b: &B) {
    assert_eq!(read(b, 0, 2 * BLOCK), filled(2 * BLOCK, 0));
    assert_eq!(
        read(b, DEVICE_BYTES - BLOCK as u64, BLOCK),
        filled(BLOCK, 0)
    );
}

fn check_write_then_read<B: Backend>(b: &B) {
    let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i * 7 % 251) as u8).collect();
    write(b, BLOCK as u64, &data, false);
    assert_eq!(read(b, BLOCK as u64, data.len()), data);
    // Neighbours untouched.
    assert_eq!(read(b, 0, BLOCK), filled(BLOCK, 0));
    assert_eq!(read(b, 4 * BLOCK as u64, BLOCK), filled(BLOCK, 0));
}

fn check_writes_across_internal_boundaries<B: Backend>(b: &B) {
    // Spans the RAM backend's 1 MiB chunk boundary and a large single transfer.
    let offset = (1 << 20) - 2 * BLOCK as u64;
    let data: Vec<u8> = (0..64 * BLOCK).map(|i| (i % 253) as u8).collect();
    write(b, offset, &data, true);
    assert_eq!(read(b, offset, data.len()), data);
}

fn check_flush_and_fua_succeed_and_keep_data<B: Backend>(b: &B) {
    write(b, 0, &filled(BLOCK, 0x11), true);
    smol::block_on(b.flush()).expect("flush");
    assert_eq!(read(b, 0, BLOCK), filled(BLOCK, 0x11));
}

fn check_discard_reads_back_zeroes<B: Backend>(b: &B) {
    write(b, 0, &filled(8 * BLOCK, 0x22), false);
    smol::block_on(b.discard(2 * BLOCK as u64, 3 * BLOCK as u64)).expect("discard");
    let back = read(b, 0, 8 * BLOCK);
    assert_eq!(&back[..2 * BLOCK], &filled(2 * BLOCK, 0x22)[..]);
    assert_eq!(&back[2 * BLOCK..5 * BLOCK], &filled(3 * BLOCK, 0)[..]);
    assert_eq!(&back[5 * BLOCK..], &filled(3 * BLOCK, 0x22)[..]);
}

fn check_write_zeroes_both_ways<B: Backend>(b: &B) {
    for unmap in [true, false] {
        write(b, 0, &filled(4 * BLOCK, 0x33), false);
        smol::block_on(b.write_zeroes(BLOCK as u64, 2 * BLOCK as u64, unmap))
            .expect("write zeroes");
        let back = read(b, 0, 4 * BLOCK);
        assert_eq!(&back[..BLOCK], &filled(BLOCK, 0x33)[..], "unmap={unmap}");
        assert_eq!(
            &back[BLOCK..3 * BLOCK],
            &filled(2 * BLOCK, 0)[..],
            "unmap={unmap}"
        );
        assert_eq!(
            &back[3 * BLOCK..],
            &filled(BLOCK, 0x33)[..],
            "unmap={unmap}"
        );
    }
}

fn check_whole_device_discard<B: Backend>(b: &B) {
    write(b, DEVICE_BYTES - BLOCK as u64, &filled(BLOCK, 0x44), false);
    smol::block_on(b.discard(0, DEVICE_BYTES)).expect("discard all");
    assert_eq!(
        read(b, DEVICE_BYTES - BLOCK as u64, BLOCK),
        filled(BLOCK, 0)
    );
}

fn run_storing_suite<B: Backend>(b: &B) {
    assert!(b.capabilities().stores_data);
    check_reports_its_geometry(b);
    check_fresh_device_reads_zeroes(b);
    check_write_then_read(b);
    check_writes_across_internal_boundaries(b);
    check_flush_and_fua_succeed_and_keep_data(b);
    check_discard_reads_back_zeroes(b);
    check_write_zeroes_both_ways(b);
    check_whole_device_discard(b);
}

#[test]
fn ram_backend_conforms() {
    run_storing_suite(&ram_subject().backend);
}

#[test]
fn file_backend_with_direct_io_conforms() {
    let subject = file_subject(DirectIo::Optional);
    run_storing_suite(&subject.backend);
}

#[test]
fn file_backend_buffered_conforms() {
    let subject = file_subject(DirectIo::Disabled);
    run_storing_suite(&subject.backend);
}

#[test]
fn cached_backend_conforms_in_every_mode() {
    for mode in CacheMode::ALL {
        let roomy = cached(
            RamBackend::new(DEVICE_BYTES),
            RamBackend::new(2 << 20),
            mode,
            None,
        );
        run_storing_suite(&roomy);
        run_storing_suite(&small_cached_ram(mode));
    }
}

#[test]
fn cached_backend_over_files_conforms() {
    // Both stores through io_uring with O_DIRECT where allowed: every cache buffer is aligned.
    let backing = file_subject(DirectIo::Optional);
    let store = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp file");
    store.as_file().set_len(2 << 20).expect("size cache file");
    let cache_store = FileStore::open(store.path(), None, DirectIo::Optional).expect("open store");
    let cache_backend = FileBackend::new(Arc::new(cache_store), BlockingRing::new().expect("ring"));
    let subject = cached(backing.backend, cache_backend, CacheMode::Writeback, None);
    run_storing_suite(&subject);
}

#[test]
fn null_backend_accepts_everything_and_stores_nothing() {
    let b = NullBackend::new(DEVICE_BYTES);
    check_reports_its_geometry(&b);
    assert!(!b.capabilities().stores_data);
    write(&b, 0, &filled(BLOCK, 1), true);
    smol::block_on(b.flush()).unwrap();
    smol::block_on(b.discard(0, DEVICE_BYTES)).unwrap();
    smol::block_on(b.write_zeroes(0, DEVICE_BYTES, false)).unwrap();
    let _ = read(&b, 0, BLOCK);
}

#[test]
fn file_backend_reports_errors_with_an_errno() {
    let subject = file_subject(DirectIo::Optional);
    // Past the end of the 4 MiB file: a short read that never completes is an error, not a hang.
    let mut buf = aligned(BLOCK, 0);
    let err = smol::block_on(subject.backend.read(DEVICE_BYTES, buf.as_mut_slice())).unwrap_err();
    assert!(err.errno > 0, "{err}");
    assert!(err.to_string().contains("read at byte"), "{err}");
}

// ---- differential property test ---------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    Write {
        block: u64,
        blocks: usize,
        seed: u8,
        fua: bool,
    },
    Read {
        block: u64,
        blocks: usize,
    },
    Flush,
    Discard {
        block: u64,
        blocks: usize,
    },
    WriteZeroes {
        block: u64,
        blocks: usize,
        unmap: bool,
    },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let total = DEVICE_BYTES / BLOCK as u64;
    let range = (0..total)
        .prop_flat_map(move |block| (Just(block), 1..=((total - block).min(48) as usize)));
    let step = prop_oneof![
        4 => (range.clone(), any::<u8>(), any::<bool>())
            .prop_map(|((block, blocks), seed, fua)| Step::Write { block, blocks, seed, fua }),
        3 => range.clone().prop_map(|(block, blocks)| Step::Read { block, blocks }),
        1 => Just(Step::Flush),
        1 => range.clone().prop_map(|(block, blocks)| Step::Discard { block, blocks }),
        1 => (range, any::<bool>()).prop_map(|((block, blocks), unmap)| Step::WriteZeroes { block, blocks, unmap }),
    ];
    proptest::collection::vec(step, 1..40)
}

fn data_for(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// Applies `steps` to `backend` and to a `Vec<u8>` reference; every read must agree.
fn agrees_with_reference<B: Backend>(backend: &B, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = vec![0u8; DEVICE_BYTES as usize];
    for step in steps {
        match *step {
            Step::Write {
                block,
                blocks,
                seed,
                fua,
            } => {
                let (at, data) = (block as usize * BLOCK, data_for(seed, blocks * BLOCK));
                write(backend, at as u64, &data, fua);
                model[at..at + data.len()].copy_from_slice(&data);
            }
            Step::Read { block, blocks } => {
                let at = block as usize * BLOCK;
                let got = read(backend, at as u64, blocks * BLOCK);
                prop_assert!(
                    got == model[at..at + blocks * BLOCK],
                    "read mismatch at {step:?}"
                );
            }
            Step::Flush => smol::block_on(backend.flush()).expect("flush"),
            Step::Discard { block, blocks } => {
                let (at, len) = (block as usize * BLOCK, blocks * BLOCK);
                smol::block_on(backend.discard(at as u64, len as u64)).expect("discard");
                model[at..at + len].fill(0);
            }
            Step::WriteZeroes {
                block,
                blocks,
                unmap,
            } => {
                let (at, len) = (block as usize * BLOCK, blocks * BLOCK);
                smol::block_on(backend.write_zeroes(at as u64, len as u64, unmap))
                    .expect("write zeroes");
                model[at..at + len].fill(0);
            }
        }
    }
    // A final full comparison catches writes that landed in the wrong place.
    prop_assert!(
        read(backend, 0, DEVICE_BYTES as usize) == model,
        "final image differs"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ram_matches_the_reference(steps in steps()) {
        agrees_with_reference(&ram_subject().backend, &steps)?;
    }

    #[test]
    fn cached_matches_the_reference(
        mode in prop::sample::select(CacheMode::ALL.to_vec()),
        steps in steps(),
    ) {
        agrees_with_reference(&small_cached_ram(mode), &steps)?;
    }

    #[test]
    fn file_matches_the_reference(steps in steps()) {
        let subject = file_subject(DirectIo::Optional);
        agrees_with_reference(&subject.backend, &steps)?;
    }
}
