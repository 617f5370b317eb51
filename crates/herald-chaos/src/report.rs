//! Printing the results, and the table of a full run in docs/reliability.md.

use std::fmt::Write as _;
use std::path::Path;

use crate::scenarios::{Outcome, Scenario};

const BEGIN: &str = "<!-- chaos:begin -->";
const END: &str = "<!-- chaos:end -->";

/// One scenario's result as the suite prints it.
pub fn print(scenario: &Scenario, outcome: &Outcome) {
    println!(
        "\n[{}] scenario {}: {}",
        if outcome.passed() { "PASS" } else { "FAIL" },
        scenario.number,
        scenario.title
    );
    if let Some(t) = &outcome.tally {
        println!(
            "  accepted {} · delivered {} · lost {} · duplicated {} · unexpected {}",
            t.accepted, t.delivered, t.lost, t.duplicated, t.unexpected
        );
    }
    for check in &outcome.checks {
        println!(
            "  {} {}: {} (target {})",
            if check.ok { "ok  " } else { "FAIL" },
            check.what,
            check.seen,
            check.target
        );
    }
    for note in &outcome.notes {
        println!("  note: {note}");
    }
}

/// The markdown table of a run: one row per scenario.
pub fn table(results: &[(&Scenario, Result<Outcome, String>)]) -> String {
    let mut out = String::from(
        "| # | Scenario | Accepted | Delivered | Lost | Duplicated | Unexpected | Result | Checks |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (scenario, result) in results {
        match result {
            Ok(outcome) => {
                let t = outcome.tally.clone().unwrap_or_default();
                let checks: Vec<String> = outcome
                    .checks
                    .iter()
                    .map(|c| {
                        format!(
                            "{}{}: {}",
                            if c.ok { "" } else { "**failed** " },
                            c.what,
                            c.seen
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    scenario.number,
                    scenario.title,
                    t.accepted,
                    t.delivered,
                    t.lost,
                    t.duplicated,
                    t.unexpected,
                    if outcome.passed() { "pass" } else { "**fail**" },
                    checks.join("; ").replace('|', "/")
                );
            }
            Err(error) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | | | | | | **error** | {} |",
                    scenario.number,
                    scenario.title,
                    error.replace('|', "/").replace('\n', " ")
                );
            }
        }
    }
    out
}

/// Replaces the table between the markers in `doc` with this run's, headed by its date and
/// machine.
pub fn write_doc(doc: &Path, table: &str, heading: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        anyhow::bail!("{} has no {BEGIN} ... {END} section", doc.display());
    };
    let mut new = String::with_capacity(text.len() + table.len());
    new.push_str(&text[..begin + BEGIN.len()]);
    new.push('\n');
    new.push_str(heading);
    new.push_str("\n\n");
    new.push_str(table);
    new.push_str(&text[end..]);
    std::fs::write(doc, new)?;
    Ok(())
}

/// "2026-12-07 04:12 UTC, 2 CPUs, 24 GiB, Linux 6.1 x86_64": where and when a run ran.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("? GiB".to_owned(), |kb| {
            format!("{} GiB", (kb + 512 * 1024) / (1024 * 1024))
        });
    let kernel = std::process::Command::new("uname")
        .args(["-sr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{}, {cpus} CPUs, {memory}, {kernel}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )
}
