//! Which unwinder jemalloc's heap samples go through: diag's frame-pointer walker by
//! default, jemalloc's own (libgcc) when configured off. A binary of its own: the hook is
//! one per process, and another test's router would switch it back mid-test.
#![cfg(feature = "heap")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;
use testkit::{Reply, get, go_pprof_async, pprof_cum_mib, temp_dir};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Read by jemalloc when it starts, as an application exports it.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 61] =
    b"prof:true,prof_active:true,lg_prof_sample:14,prof_accum:true\0";

const MIB: usize = 1 << 20;

/// `mb` MiB in 1 MiB blocks, touched, while diag's walker unwinds. Optimized, each
/// function must keep a frame of its own: `black_box` keeps the collect from being a tail
/// call (which leaves no frame), and the fill bytes differ so that the two functions'
/// code is not merged into one under one name.
#[inline(never)]
fn held_under_frame_pointers(mb: usize) -> Vec<Box<[u8]>> {
    std::hint::black_box(
        (0..mb)
            .map(|i| vec![i as u8 | 1; MIB].into_boxed_slice())
            .collect(),
    )
}

/// The same while jemalloc's own unwinder does.
#[inline(never)]
fn held_under_libgcc(mb: usize) -> Vec<Box<[u8]>> {
    std::hint::black_box(
        (0..mb)
            .map(|i| vec![i as u8 | 2; MIB].into_boxed_slice())
            .collect(),
    )
}

async fn server(cfg: diag::Config) -> SocketAddr {
    testkit::serve(diag::router(cfg)).await
}

async fn heap(addr: SocketAddr) -> Reply {
    let url = format!("http://{addr}/debug/pprof/heap");
    let r = get(&url).await;
    assert_eq!(r.status, StatusCode::OK, "{url}: {}", r.text());
    r
}

async fn pprof(body: &[u8], args: &[&str]) -> String {
    let path: PathBuf = temp_dir("heap-unwinder").join("profile.pb.gz");
    std::fs::write(&path, body).unwrap();
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.push(path.display().to_string());
    go_pprof_async(args).await
}

/// The `go tool pprof -traces` stacks holding `name`, each as its list of functions.
fn stacks_with(traces: &str, name: &str) -> Vec<Vec<String>> {
    traces
        .split("-----------+-------------------------------------------------------")
        .map(|t| {
            // "   24MB   function" on a stack's first line, "   function" after.
            t.lines()
                .map(|l| l.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|s| s.iter().any(|f| f.ends_with(name)))
        .collect()
}

const ALLOCATOR_FRAMES: &[&str] = &[
    "prof_backtrace",
    "_rjem_",
    "je_prof",
    "imalloc",
    "tikv_jemallocator",
    "__rust_alloc",
    "heap::unwinder",
];

/// Checks that the profile names `name` for `mb` MiB with the test's caller above it and
/// no allocator frame; returns its stacks.
async fn held_by(body: &[u8], name: &str, mb: f64) -> Vec<Vec<String>> {
    let top = pprof(body, &["-top", "-cum", "-unit=MB"]).await;
    let mib = pprof_cum_mib(&top, name).unwrap_or_else(|| panic!("{name} missing:\n{top}"));
    assert!(
        (mb - 2.0..=mb + 2.0).contains(&mib),
        "{name} {mib} MiB:\n{top}"
    );
    let traces = pprof(body, &["-traces"]).await;
    let stacks = stacks_with(&traces, name);
    assert!(!stacks.is_empty(), "{traces}");
    for s in &stacks {
        for f in ALLOCATOR_FRAMES {
            assert!(!s.iter().any(|g| g.contains(f)), "{f} in a stack: {s:#?}");
        }
        // The allocating function's caller, this test, is above it.
        let at = s.iter().position(|f| f.ends_with(name)).unwrap();
        assert!(
            s[at + 1..]
                .iter()
                .any(|f| f.contains("frame_pointers_by_default")),
            "the test's own frame is missing above {name}: {s:#?}"
        );
    }
    stacks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_pointers_by_default_and_libgcc_when_turned_off() {
    // Default: diag's walker is probed and installed when the router is built.
    let on = server(diag::Config::default()).await;
    let r = heap(on).await;
    assert_eq!(r.header("x-diag-heap-unwinder"), "frame-pointer");
    let raw = pprof(&r.body, &["-raw"]).await;
    assert!(raw.contains("diag's frame-pointer walker"), "{raw}");
    // The probe's verdict: the stacks agreed from the allocating function up.
    assert!(
        raw.contains("a probe allocation gave the same")
            && raw.contains("from the allocating function up"),
        "{raw}"
    );
    let fp = held_under_frame_pointers(24);
    let r = heap(on).await;
    assert_eq!(r.header("x-diag-heap-unwinder"), "frame-pointer");
    let fp_stacks = held_by(&r.body, "held_under_frame_pointers", 24.0).await;

    // Turned off: building a router so configured writes jemalloc's own back, and every
    // router's profile says so.
    let off = server(diag::Config::default().with_heap_frame_pointers(false)).await;
    for addr in [on, off] {
        assert_eq!(heap(addr).await.header("x-diag-heap-unwinder"), "jemalloc");
    }
    let lg = held_under_libgcc(24);
    let r = heap(off).await;
    assert_eq!(r.header("x-diag-heap-unwinder"), "jemalloc");
    let raw = pprof(&r.body, &["-raw"]).await;
    assert!(raw.contains("jemalloc's own unwinder"), "{raw}");
    let lg_stacks = held_by(&r.body, "held_under_libgcc", 24.0).await;
    // Both name the same callers above the allocating function (the thread's root aside,
    // which libgcc follows one frame further into glibc).
    let above = |s: &Vec<String>, name: &str| -> Vec<String> {
        let at = s.iter().position(|f| f.ends_with(name)).unwrap();
        s[at + 1..]
            .iter()
            .take_while(|f| f.contains("::"))
            .cloned()
            .collect()
    };
    assert_eq!(
        above(&fp_stacks[0], "held_under_frame_pointers"),
        above(&lg_stacks[0], "held_under_libgcc"),
        "{fp_stacks:#?}\n{lg_stacks:#?}"
    );

    // On again: the probe's verdict is kept, the walker goes back in.
    let again = server(diag::Config::default()).await;
    assert_eq!(
        heap(again).await.header("x-diag-heap-unwinder"),
        "frame-pointer"
    );
    drop((fp, lg));
}
