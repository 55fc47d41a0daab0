//! A self-contained SVG chart: demand, and desired (dashed) and Ready (solid) nodes per policy.

use super::Report;
use std::fmt::Write;

const W: f64 = 1100.0;
const H: f64 = 520.0;
const PAD: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#7f7f7f", "#ff7f0e", "#9467bd", "#2ca02c", "#d62728",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn svg(report: &Report) -> String {
    let t_max = report.demand.last().map(|d| d.0).unwrap_or(1).max(1) as f64;
    let y_max = report
        .timelines
        .iter()
        .flat_map(|(_, tl)| tl.iter().map(|s| s.desired.max(s.ready) as f64))
        .chain(report.demand.iter().map(|d| d.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |t: i64| PAD + (W - 2.0 * PAD) * t as f64 / t_max;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / y_max;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="24" font-size="16">SmartScale digital twin — {} (nodes over hours)</text>
<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{}" stroke="black"/>
"#,
        escape(&report.scenario),
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            PAD - 6.0,
            y(v) + 4.0
        );
        let t = (t_max * i as f64 / 5.0) as i64;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.1} h</text>"#,
            x(t),
            H - PAD + 18.0,
            t as f64 / 3600.0
        );
    }
    let line = |points: Vec<(i64, f64)>, color: &str, dash: &str, width: f64| {
        let pts: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" points="{}"/>"#,
            pts.join(" ")
        )
    };
    let _ = writeln!(out, "{}", line(report.demand.clone(), "black", "2,2", 2.0));
    let mut legend = vec![("demand (nodes of CPU)".to_string(), "black")];
    for (i, (name, tl)) in report.timelines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let ready = tl.iter().map(|s| (s.t, s.ready as f64)).collect();
        let desired = tl.iter().map(|s| (s.t, s.desired as f64)).collect();
        let _ = writeln!(out, "{}", line(ready, color, "none", 1.5));
        let _ = writeln!(out, "{}", line(desired, color, "6,3", 1.0));
        legend.push((format!("{name}: ready (solid), desired (dashed)"), color));
    }
    for (i, (label, color)) in legend.iter().enumerate() {
        let ly = PAD + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{}" y="{:.1}">{}</text>"#,
            W - PAD - 300.0,
            ly - 4.0,
            W - PAD - 282.0,
            ly,
            escape(label)
        );
    }
    out.push_str("</svg>\n");
    out
}
