//! `demo`: the counter service with diag mounted. `demo --help` lists the flags.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use demo::{AppState, Args, DiagListen, LogFormat};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// jemalloc is the allocator, so that diag's heap profiles see every allocation.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings ([`demo::MALLOC_CONF`]), read by jemalloc at start under this name.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 84] = demo::MALLOC_CONF;

fn init_logging(format: LogFormat, console: Option<diag::console::ConsoleLayer>, trace: bool) {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    // The filter applies to the log lines only: the console layer sees tokio's trace-level
    // task spans whatever RUST_LOG says.
    tracing_subscriber::registry()
        .with(console)
        .with(trace.then(diag::trace::layer))
        .with(fmt.with_filter(filter))
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n);
    }
    if let Some(n) = args.max_blocking_threads {
        runtime.max_blocking_threads(n);
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(start(args)),
        Err(e) => {
            eprintln!("demo: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start(args: Args) -> ExitCode {
    let console = if args.console {
        match diag::console::bind(&args.console_listen, args.console_retention).await {
            Ok((layer, server)) => Some((layer, server)),
            Err(e) => {
                init_logging(args.log_format, None, !args.no_trace_layer);
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let (layer, console) = console.unzip();
    init_logging(args.log_format, layer, !args.no_trace_layer);
    match run(args, console).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    args: Args,
    console: Option<diag::console::ConsoleServer>,
) -> Result<ExitCode, String> {
    let stop = diag::Shutdown::new();
    // Slow or idle clients cannot hold connections (or the shutdown): both listeners close
    // stuck connections, and at shutdown every connection with no request in flight. A
    // request still running when the shutdown timeout runs out is reported below (exit 1);
    // the listeners' own grace is a second longer, so that report comes first.
    let limits = diag::conn::ConnLimits::default()
        .with_max_connections(args.max_connections)
        .with_shutdown_grace(args.shutdown_timeout + std::time::Duration::from_secs(1));
    let cfg = diag_config(&args, &stop, limits, console.as_ref());
    let console_addr = console.map(|server| {
        let at = server.local_addr();
        server.spawn(stop.clone());
        at
    });
    let state = AppState::start(args.options()?).await;
    let (hold_cap_mb, hold_cap) = state.hold_cap();
    tracing::info!(
        store = state.store_name(),
        count = %state.store_description(),
        hold_cap_mb,
        hold_cap,
        "count store"
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    let (app, sidecar, diag_addr) = mount(&args, &state, cfg, addr).await?;
    let server = {
        let stop = stop.clone();
        demo::spawn_named("demo::serve", async move {
            diag::conn::serve(listener, app, limits, stop).await
        })
    };
    state.set_ready(true);
    log_listening(addr, diag_addr, console_addr);

    let signal = shutdown_signal().await?;
    state.set_ready(false);
    tracing::info!(
        signal,
        drain_delay_ms = args.drain_delay.as_millis() as u64,
        timeout_ms = args.shutdown_timeout.as_millis() as u64,
        "shutting down: readiness is 503, requests in flight may finish"
    );
    tokio::time::sleep(args.drain_delay).await;
    stop.trigger();
    drain(&args, server, sidecar).await
}

/// diag's settings from the flags: its own connection limits (the sidecar's default cap,
/// not the app's), the token from the environment, the console to show on the index.
fn diag_config(
    args: &Args,
    stop: &diag::Shutdown,
    limits: diag::conn::ConnLimits,
    console: Option<&diag::console::ConsoleServer>,
) -> diag::Config {
    let mut cfg = diag::Config::default()
        .with_conn_limits(
            limits.with_max_connections(diag::conn::ConnLimits::DEFAULT_MAX_CONNECTIONS),
        )
        .with_default_env()
        .with_shutdown(stop.clone())
        .with_min_dump_interval(args.dump_interval)
        .with_heap_frame_pointers(!args.heap_libgcc_unwinder);
    if let Some(console) = console {
        cfg = cfg.with_console(console);
    }
    if let Some(keep) = args.cpu_recorder.0 {
        cfg = cfg.with_cpu_recorder(diag::config::CpuRecorder::new(keep));
    }
    cfg
}

/// The app, with diag merged into it or on a sidecar of its own (`--diag-listen`), and
/// where diag answers.
async fn mount(
    args: &Args,
    state: &AppState,
    cfg: diag::Config,
    addr: SocketAddr,
) -> Result<
    (
        axum::Router,
        Option<diag::server::Sidecar>,
        Option<SocketAddr>,
    ),
    String,
> {
    Ok(match args.diag_listen {
        DiagListen::Main => (demo::app(state.clone(), Some(cfg)), None, Some(addr)),
        DiagListen::Sidecar(at) => {
            let sidecar = diag::serve(cfg, at)
                .await
                .map_err(|e| format!("cannot listen for diag on {at}: {e}"))?;
            let diag_addr = sidecar.local_addr();
            (
                demo::app(state.clone(), None),
                Some(sidecar),
                Some(diag_addr),
            )
        }
        DiagListen::Off => (demo::app(state.clone(), None), None, None),
    })
}

/// The start-up line: where the app, diag and the console answer, and commands to try.
fn log_listening(addr: SocketAddr, diag_addr: Option<SocketAddr>, console: Option<SocketAddr>) {
    let diag_url = |path: &str| {
        diag_addr.map_or_else(
            || "off (--diag-listen off)".to_owned(),
            |a| format!("http://{a}/debug/pprof/{path}"),
        )
    };
    tracing::info!(
        addr = %addr,
        diag = %diag_url(""),
        profile = %format!("go tool pprof -top {}", diag_url("profile?seconds=30")),
        flamegraph = %format!("curl -o flamegraph.svg {}", diag_url("flamegraph?seconds=30")),
        console = %console.map_or_else(
            || "off (--console turns it on)".to_owned(),
            |at| format!("tokio-console http://{at}")
        ),
        "listening"
    );
}

/// Waits, up to the shutdown timeout, for the app's listener and the sidecar to stop, and
/// says how it went.
async fn drain(
    args: &Args,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    sidecar: Option<diag::server::Sidecar>,
) -> Result<ExitCode, String> {
    let drained = tokio::time::timeout(args.shutdown_timeout, async {
        let app = server.await;
        let diag = match sidecar {
            Some(s) => s.wait().await,
            None => Ok(()),
        };
        (app, diag)
    })
    .await;
    match drained {
        Ok((Ok(Ok(())), Ok(()))) => {
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Ok((app, diag)) => Err(format!("stopped with errors: app {app:?}, diag {diag:?}")),
        Err(_) => {
            tracing::error!(
                timeout_ms = args.shutdown_timeout.as_millis() as u64,
                "requests still in flight when the shutdown timeout ran out; exiting anyway"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP and names the one that came.
async fn shutdown_signal() -> Result<&'static str, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = hup.recv() => "SIGHUP",
    })
}
