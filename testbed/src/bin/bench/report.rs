//! The report: sections of Markdown tables with their notes, the targets of issue 7 beside
//! what was measured, and how a sample of figures is shown (`median (min-max)`).

use std::time::Duration;

/// Everything measured, then printed.
pub struct Report {
    pub sections: Vec<Section>,
    pub targets: Vec<Target>,
}

/// One table of the report, with the notes printed under it.
pub struct Section {
    title: String,
    header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: &str, header: &[&str]) -> Section {
        Section {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        eprintln!("bench:   {}", cells.join(" | "));
        self.rows.push(cells);
    }
}

/// One target of the issue, beside the figure it is judged on.
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for section in &self.sections {
            writeln!(f, "\n### {}\n", section.title)?;
            writeln!(f, "| {} |", section.header.join(" | "))?;
            writeln!(
                f,
                "|{}",
                section.header.iter().map(|_| " --- |").collect::<String>()
            )?;
            for row in &section.rows {
                writeln!(f, "| {} |", row.join(" | "))?;
            }
            for note in &section.notes {
                writeln!(f, "\n{note}")?;
            }
        }
        if !self.targets.is_empty() {
            writeln!(f, "\n### Targets\n")?;
            writeln!(f, "| target | measured | |")?;
            writeln!(f, "| --- | --- | --- |")?;
            for t in &self.targets {
                let verdict = if t.met { "met" } else { "**missed**" };
                writeln!(f, "| {} | {} | {verdict} |", t.target, t.measured)?;
            }
        }
        Ok(())
    }
}

/// A sample of durations in seconds.
#[derive(Debug, Clone, Default)]
pub struct Sample(Vec<f64>);

impl Sample {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }

    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// `1.234 s (1.100-1.400)`.
    pub fn show(&self) -> String {
        if self.0.is_empty() {
            return "-".into();
        }
        format!(
            "{:.3} s ({:.3}-{:.3})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

pub fn secs(x: f64) -> String {
    format!("{x:.3} s")
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// `12 (10-15)`: the median and range of counts.
pub fn counts(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    match v.len() {
        0 => "-".into(),
        1 => v[0].to_string(),
        n => {
            let median = if n % 2 == 1 {
                v[n / 2].to_string()
            } else {
                format!("{:.0}", (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0)
            };
            format!("{median} ({}-{})", v[0], v[n - 1])
        }
    }
}
