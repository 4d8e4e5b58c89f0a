//! The benchmark report shared by the berthd and MCP benchmarks: p50/p99 rows, each with its baseline
//! from the same run and the ratio, printed and kept as Markdown and JSON.

#![allow(dead_code)]

use std::time::Duration;

pub fn pct(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (pick(0.5), pick(0.99))
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub struct Report {
    pub md: String,
    pub json: Vec<String>,
}

impl Report {
    pub fn row(&mut self, name: &str, v: &[Duration], base: Option<(&str, &[Duration])>) {
        let (p50, p99) = pct(v.to_vec());
        let (b, ratio) = match base {
            Some((bn, bv)) => {
                let (b50, b99) = pct(bv.to_vec());
                (
                    format!("{bn}: p50 {} / p99 {}", ms(b50), ms(b99)),
                    format!("{:.2}x", p50.as_secs_f64() / b50.as_secs_f64()),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!("{name}: p50 {} p99 {} (n={}) | {b} | {ratio}", ms(p50), ms(p99), v.len());
        self.md.push_str(&format!("| {name} | p50 {} / p99 {} | {b} | {ratio} |\n", ms(p50), ms(p99)));
        self.json.push(format!(
            r#"{{"name":"{name}","p50_ms":{:.3},"p99_ms":{:.3},"n":{}}}"#,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            v.len()
        ));
    }
}

impl Report {
    /// A row whose figures are already text.
    pub fn text_row(&mut self, name: &str, value: &str, base: &str, ratio: &str) {
        println!("{name}: {value} | {base} | {ratio}");
        self.md.push_str(&format!("| {name} | {value} | {base} | {ratio} |\n"));
        self.json.push(format!(r#"{{"name":"{name}","value":"{value}","baseline":"{base}","ratio":"{ratio}"}}"#));
    }

    pub fn new() -> Report {
        Report {
            md: "| measure | Berth | floor / baseline (same run) | ratio |\n|---|---|---|---|\n".into(),
            json: vec![],
        }
    }

    /// Prints the table and writes `target/bench/NAME.{md,json}`.
    pub fn write(&self, name: &str) {
        println!("\n{}", self.md);
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        std::fs::create_dir_all(&out).expect("create target/bench");
        std::fs::write(out.join(format!("{name}.md")), &self.md).expect("write the Markdown report");
        std::fs::write(out.join(format!("{name}.json")), format!("[\n{}\n]\n", self.json.join(",\n")))
            .expect("write the JSON report");
    }
}

/// The whole machine's busy CPU time (user, nice, system, irq, softirq; not idle, iowait or steal), from
/// `/proc/stat`, in seconds. Read before and after a round of calls, it gives the CPU one call costs
/// everywhere (clients, berthd, agents, containerd), and with it the floor any number of clients
/// must queue behind on this machine's cores.
pub fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().next().expect("/proc/stat has a cpu line");
    let f: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100 on Linux.
    (f[0] + f[1] + f[2] + f[5] + f[6]) / 100.0
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// The p50 that `clients` concurrent callers cannot beat on this machine when every call costs
/// `cpu_per_call` seconds of CPU (Little's law with the cores saturated): clients × CPU ÷ cores.
pub fn cpu_floor(clients: usize, cpu_per_call: f64) -> Duration {
    Duration::from_secs_f64(clients as f64 * cpu_per_call / cores() as f64)
}
