//! `just chaos`: Herald's fault suite (issue #18). See the library's documentation for what
//! it runs and docs/reliability.md for the scenarios and the last full run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use herald_chaos::report;
use herald_chaos::scenarios::{ALL, Ctx};
use herald_chaos::stack::Options;

#[derive(Parser)]
#[command(about = "Herald's fault suite: faults under load, counted at the providers")]
struct Args {
    /// The CI version: scenarios 2, 3, 6 and 9 with small loads.
    #[arg(long)]
    short: bool,
    /// Only these scenarios (`--only 1,4`), in the full or short size.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Where the service binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where each service's log goes.
    #[arg(long, default_value = "target/chaos-logs")]
    log_dir: PathBuf,
    /// People in the tenant (each message goes to one of them, in turn).
    #[arg(long, default_value_t = 500)]
    users: u32,
    /// Write the results table into docs/reliability.md (the full run's record).
    #[arg(long)]
    write_doc: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    herald_runtime::install_crypto_provider();
    herald_runtime::telemetry::init_tracing(&herald_runtime::config::LogConfig {
        // The producers retry through a broker outage by design; their warnings would bury
        // the results.
        filter: "error,lapin=off".into(),
        ..Default::default()
    });
    let ctx = Ctx {
        options: Options {
            bin_dir: args.bin_dir,
            log_dir: args.log_dir.clone(),
            users: args.users,
            sender_replicas: 1,
            via_proxy: false,
            cluster: false,
            sender_env: Vec::new(),
        },
        short: args.short,
    };
    if let Some(unknown) = args
        .only
        .iter()
        .find(|n| !ALL.iter().any(|s| s.number == **n))
    {
        eprintln!(
            "chaos: there is no scenario {unknown} (they are {})",
            ALL.iter()
                .map(|s| s.number.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::FAILURE;
    }
    if args.write_doc && (args.short || !args.only.is_empty()) {
        eprintln!("chaos: --write-doc records a full run: without --short and --only");
        return ExitCode::FAILURE;
    }
    let chosen: Vec<_> = ALL
        .iter()
        .filter(|s| {
            if args.only.is_empty() {
                !args.short || s.short
            } else {
                args.only.contains(&s.number)
            }
        })
        .collect();
    println!(
        "chaos: {} scenario(s), {} version; service logs in {}",
        chosen.len(),
        if args.short { "short" } else { "full" },
        args.log_dir.display()
    );
    let mut results = Vec::new();
    for scenario in chosen {
        println!("\n== scenario {}: {}", scenario.number, scenario.title);
        let started = std::time::Instant::now();
        // Ctrl-C or SIGTERM drops the scenario, and with it its stack: the services are
        // killed and the broker and database of the run stopped, not left behind.
        let result = tokio::select! {
            result = scenario.run(&ctx) => result.map_err(|e| format!("{e:#}")),
            () = interrupted() => {
                eprintln!("chaos: interrupted; the scenario's services, broker and database are stopped");
                return ExitCode::FAILURE;
            }
        };
        match &result {
            Ok(outcome) => report::print(scenario, outcome),
            Err(error) => println!("\n[ERROR] scenario {}: {error}", scenario.number),
        }
        println!("  took {:.0}s", started.elapsed().as_secs_f64());
        results.push((scenario, result));
    }
    let table = report::table(&results);
    println!("\n{table}");
    let passed = results
        .iter()
        .all(|(_, r)| r.as_ref().is_ok_and(|o| o.passed()));
    if args.write_doc {
        let heading = format!(
            "Last full run: {} ({}).",
            report::machine(),
            if passed {
                "every scenario passed"
            } else {
                "not every scenario passed"
            }
        );
        let doc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/reliability.md");
        if let Err(error) = report::write_doc(&doc, &table, &heading) {
            eprintln!("chaos: could not write {}: {error:#}", doc.display());
            return ExitCode::FAILURE;
        }
        println!("chaos: wrote the table to {}", doc.display());
    }
    println!(
        "chaos: {}",
        if passed {
            "every scenario passed"
        } else {
            "FAILED"
        }
    );
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
