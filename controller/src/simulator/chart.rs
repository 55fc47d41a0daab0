//! A self-contained SVG chart of a twin run: two panels on one time axis, nodes above (demand,
//! and desired (dashed) and Ready (solid) nodes per policy) and pods pending below (the most
//! pending at once in each interval, per policy), with the legend in a column right of the
//! plots so it never covers data. `smartscale` is drawn after every other policy, and thicker,
//! so no baseline hides it. No fonts, scripts or links: the same report gives the same bytes.

use super::{Report, Timeline};
use std::fmt::Write;

const W: f64 = 1160.0;
const H: f64 = 636.0;
/// The plot area's left and right edges (both panels); the legend starts right of `RIGHT`.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 880.0;
const LEGEND_X: f64 = RIGHT + 28.0;
const NODES_TOP: f64 = 70.0;
const NODES_BOTTOM: f64 = 370.0;
const PENDING_TOP: f64 = 424.0;
const PENDING_BOTTOM: f64 = 584.0;
/// The policy this repository ships: drawn last, thicker.
const HERO: &str = "smartscale";
/// By the report's order: smartscale, the other smartscale setting, static-peak,
/// seed-thresholds, prototype, requests-only, oracle; then around again.
const COLORS: [&str; 8] = [
    "#1f77b4", "#17becf", "#7f7f7f", "#ff7f0e", "#9467bd", "#2ca02c", "#d62728", "#8c564b",
];

/// Text and attribute values, XML-escaped.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks up to `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Hours between time ticks: steps a clock reader expects (1, 2, 3, 6, 12 h, days), at most 8.
fn hour_step(hours: f64) -> f64 {
    if hours < 2.0 {
        return nice_step(hours, 5.0);
    }
    [1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 48.0, 72.0, 168.0]
        .into_iter()
        .find(|s| hours / s <= 8.0)
        .unwrap_or_else(|| nice_step(hours / 24.0, 6.0) * 24.0)
}

/// A number with at most three decimals and no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// One panel: its vertical extent and its count axis (from 0 to `y_max`, ticks `y_step` apart).
#[derive(Clone, Copy)]
struct Panel {
    id: &'static str,
    top: f64,
    bottom: f64,
    y_max: f64,
    y_step: f64,
}

impl Panel {
    fn new(id: &'static str, top: f64, bottom: f64, data_max: f64) -> Panel {
        // Counts: whole-number ticks, the top tick a little above the highest point.
        let y_step = nice_step(data_max.max(1.0), 5.0).max(1.0);
        let y_max = (data_max.max(1.0) * 1.05 / y_step).ceil() * y_step;
        Panel {
            id,
            top,
            bottom,
            y_max,
            y_step,
        }
    }

    fn y(&self, v: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * v / self.y_max
    }
}

/// The time axis shared by both panels.
#[derive(Clone, Copy)]
struct TimeAxis {
    t_max: f64,
    step_h: f64,
}

impl TimeAxis {
    fn x(&self, t: i64) -> f64 {
        LEFT + (RIGHT - LEFT) * t as f64 / self.t_max
    }

    /// Tick times in seconds, every `step_h` hours up to the end.
    fn ticks(&self) -> Vec<(i64, f64)> {
        let hours = self.t_max / 3600.0;
        (0..)
            .map(|i| i as f64 * self.step_h)
            .take_while(|h| *h <= hours + 1e-9)
            .map(|h| ((h * 3600.0).round() as i64, h))
            .collect()
    }
}

/// Opens a panel's group: grid, frame, ticks (hours on x, counts on y), title and axis label.
fn open_panel(out: &mut String, p: &Panel, axis: &TimeAxis, title: &str, y_label: &str) {
    let _ = writeln!(out, r#"<g id="{}-panel">"#, p.id);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        num(p.top - 10.0),
        escape(title)
    );
    let mut v = 0.0;
    while v <= p.y_max + 1e-9 {
        let y = num(p.y(v));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#e6e6e6"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            num(LEFT - 6.0),
            num(p.y(v) + 4.0),
            num(v)
        );
        v += p.y_step;
    }
    for (t, h) in axis.ticks() {
        let x = num(axis.x(t));
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#e6e6e6"/><line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="black"/><text x="{x}" y="{}" text-anchor="middle">{} h</text>"##,
            num(p.top),
            num(p.bottom),
            num(p.bottom),
            num(p.bottom + 4.0),
            num(p.bottom + 16.0),
            num(h)
        );
    }
    let _ = writeln!(
        out,
        r#"<rect class="plot-frame" x="{LEFT}" y="{}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        num(p.top),
        num(RIGHT - LEFT),
        num(p.bottom - p.top)
    );
    let (lx, ly) = (num(LEFT - 44.0), num((p.top + p.bottom) / 2.0));
    let _ = writeln!(
        out,
        r#"<text x="{lx}" y="{ly}" transform="rotate(-90 {lx} {ly})" text-anchor="middle">{}</text>"#,
        escape(y_label)
    );
}

/// One line; `policy` names it (`data-policy`) so the chart can be read back.
#[allow(clippy::too_many_arguments)]
fn polyline(
    out: &mut String,
    class: &str,
    policy: Option<&str>,
    points: impl Iterator<Item = (f64, f64)>,
    color: &str,
    width: f64,
    dash: Option<&str>,
) {
    let pts: Vec<String> = points
        .map(|(x, y)| format!("{},{}", num_1(x), num_1(y)))
        .collect();
    let policy = policy
        .map(|p| format!(r#" data-policy="{}""#, escape(p)))
        .unwrap_or_default();
    let dash = dash
        .map(|d| format!(r#" stroke-dasharray="{d}""#))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        r#"<polyline class="{class}"{policy} fill="none" stroke="{color}" stroke-width="{}"{dash} stroke-linejoin="round" points="{}"/>"#,
        num(width),
        pts.join(" ")
    );
}

/// Coordinates to one decimal (enough at this size, and small files).
fn num_1(v: f64) -> String {
    format!("{v:.1}")
}

/// Policies in drawing order: every other policy in the report's order, then `smartscale`;
/// each with its colour (by its place in the report, so the legend and the lines agree).
fn draw_order(report: &Report) -> Vec<(&str, &[Timeline], &'static str)> {
    let all = report
        .timelines
        .iter()
        .enumerate()
        .map(|(i, (name, tl))| (name.as_str(), tl.as_slice(), COLORS[i % COLORS.len()]));
    let (hero, others): (Vec<_>, Vec<_>) = all.partition(|(name, _, _)| *name == HERO);
    others.into_iter().chain(hero).collect()
}

fn width(name: &str, normal: f64, hero: f64) -> f64 {
    if name == HERO { hero } else { normal }
}

pub fn svg(report: &Report) -> String {
    let t_max = report
        .demand
        .iter()
        .map(|d| d.0)
        .chain(
            report
                .timelines
                .iter()
                .flat_map(|(_, tl)| tl.last().map(|s| s.t)),
        )
        .fold(1, i64::max) as f64;
    let axis = TimeAxis {
        t_max,
        step_h: hour_step(t_max / 3600.0),
    };
    let nodes_max = report
        .timelines
        .iter()
        .flat_map(|(_, tl)| tl.iter().map(|s| s.desired.max(s.ready) as f64))
        .chain(report.demand.iter().map(|d| d.1))
        .fold(1.0, f64::max);
    let pending_max = report
        .timelines
        .iter()
        .flat_map(|(_, tl)| tl.iter().map(|s| s.pending as f64))
        .fold(1.0, f64::max);
    let nodes = Panel::new("nodes", NODES_TOP, NODES_BOTTOM, nodes_max);
    let pending = Panel::new("pending", PENDING_TOP, PENDING_BOTTOM, pending_max);
    let order = draw_order(report);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="26" font-size="16">SmartScale digital twin — {}</text>
<text x="{LEFT}" y="44" fill="#555">{HERO} is drawn on top of the other policies, with a thicker line; both panels share the time axis.</text>"##,
        escape(&report.scenario)
    );

    open_panel(
        &mut out,
        &nodes,
        &axis,
        "Nodes: demand, and desired (dashed) and Ready (solid) per policy",
        "nodes",
    );
    polyline(
        &mut out,
        "demand",
        None,
        report.demand.iter().map(|(t, v)| (axis.x(*t), nodes.y(*v))),
        "black",
        2.0,
        Some("2,2"),
    );
    for (name, tl, color) in &order {
        let line =
            |f: fn(&Timeline) -> u32| tl.iter().map(move |s| (axis.x(s.t), nodes.y(f(s) as f64)));
        polyline(
            &mut out,
            "desired",
            Some(name),
            line(|s| s.desired),
            color,
            width(name, 1.0, 1.75),
            Some("6,3"),
        );
        polyline(
            &mut out,
            "ready",
            Some(name),
            line(|s| s.ready),
            color,
            width(name, 1.5, 2.75),
            None,
        );
    }
    out.push_str("</g>\n");

    open_panel(
        &mut out,
        &pending,
        &axis,
        "Pods pending: the most at once in each interval, per policy",
        "pods pending",
    );
    for (name, tl, color) in &order {
        polyline(
            &mut out,
            "pending",
            Some(name),
            tl.iter()
                .map(|s| (axis.x(s.t), pending.y(s.pending as f64))),
            color,
            width(name, 1.5, 2.75),
            None,
        );
    }
    out.push_str("</g>\n");
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">time since the start (hours)</text>"#,
        num((LEFT + RIGHT) / 2.0),
        num(PENDING_BOTTOM + 36.0)
    );

    legend(&mut out, report);
    out.push_str("</svg>\n");
    out
}

/// The legend, in its own column right of the plots: each policy (with its node-hours and
/// p99 wait when the report has them), then what the line styles mean.
fn legend(out: &mut String, report: &Report) {
    let x0 = num(LEGEND_X);
    let x1 = num(LEGEND_X + 26.0);
    let tx = num(LEGEND_X + 34.0);
    out.push_str("<g id=\"legend\">\n");
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">Policies</text>"#,
        num(NODES_TOP - 10.0)
    );
    let mut y = NODES_TOP + 10.0;
    for (i, (name, _)) in report.timelines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let bold = if name == HERO {
            r#" font-weight="bold""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{}" x2="{x1}" y2="{}" stroke="{color}" stroke-width="{}"/><text x="{tx}" y="{}"{bold}>{}</text>"#,
            num(y - 4.0),
            num(y - 4.0),
            num(width(name, 2.0, 3.5)),
            num(y),
            escape(name)
        );
        if let Some(p) = report.get(name) {
            let _ = writeln!(
                out,
                r##"<text x="{tx}" y="{}" font-size="11" fill="#555">{} node-h, wait p99 {} s</text>"##,
                num(y + 14.0),
                num((p.node_hours * 10.0).round() / 10.0),
                num(p.pending_p99_s.round())
            );
        }
        y += 36.0;
    }
    y += 8.0;
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">Lines</text>"#,
        num(y)
    );
    y += 20.0;
    for (label, color, w, dash) in [
        ("demand (nodes' worth of CPU)", "black", 2.0, Some("2,2")),
        ("desired nodes", "#555", 1.0, Some("6,3")),
        ("Ready nodes; pods pending", "#555", 1.5, None),
    ] {
        let dash = dash
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            r#"<line x1="{x0}" y1="{}" x2="{x1}" y2="{}" stroke="{color}" stroke-width="{}"{dash}/><text x="{tx}" y="{}">{}</text>"#,
            num(y - 4.0),
            num(y - 4.0),
            num(w),
            num(y),
            escape(label)
        );
        y += 20.0;
    }
    out.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(points: &[(i64, u32, u32, u32)]) -> Vec<Timeline> {
        points
            .iter()
            .map(|&(t, desired, ready, pending)| Timeline {
                t,
                desired,
                ready,
                pending,
            })
            .collect()
    }

    /// Three policies, smartscale first as in a real report; only `prototype` makes pods wait.
    fn report() -> Report {
        let quiet = |n| timeline(&[(0, n, n, 0), (3600, n, n, 0), (7200, n, n, 0)]);
        Report {
            scenario: "a<b & \"c\"".to_string(),
            boot_time_s: 75,
            policies: vec![],
            timelines: vec![
                ("smartscale".to_string(), quiet(3)),
                (
                    "prototype".to_string(),
                    timeline(&[(0, 2, 2, 0), (3600, 4, 2, 7), (7200, 4, 4, 0)]),
                ),
                ("oracle".to_string(), quiet(3)),
            ],
            demand: vec![(0, 2.0), (3600, 3.5), (7200, 3.0)],
        }
    }

    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[start..].split('"').next()
    }

    fn num_attr(tag: &str, name: &str) -> f64 {
        attr(tag, name).unwrap().parse().unwrap()
    }

    /// The text of one `<g id="...">` group (groups are not nested).
    fn group<'a>(svg: &'a str, id: &str) -> &'a str {
        let start = svg.find(&format!("<g id=\"{id}\">")).unwrap();
        let end = start + svg[start..].find("</g>").unwrap();
        &svg[start..end]
    }

    /// Every `<name ...>` tag in `text`, in order.
    fn tags<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.match_indices(&format!("<{name} "))
            .map(|(i, _)| &text[i..i + text[i..].find('>').unwrap()])
            .collect()
    }

    fn points(tag: &str) -> Vec<(f64, f64)> {
        attr(tag, "points")
            .unwrap()
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn smartscale_is_drawn_after_every_other_policy_and_thicker() {
        let svg = svg(&report());
        for panel in ["nodes-panel", "pending-panel"] {
            let lines: Vec<&str> = tags(group(&svg, panel), "polyline")
                .into_iter()
                .filter(|l| attr(l, "data-policy").is_some())
                .collect();
            let first_hero = lines
                .iter()
                .position(|l| attr(l, "data-policy") == Some("smartscale"))
                .unwrap();
            let last_other = lines
                .iter()
                .rposition(|l| attr(l, "data-policy") != Some("smartscale"))
                .unwrap();
            assert!(first_hero > last_other, "{panel}: {lines:?}");
            for hero in &lines[first_hero..] {
                let same_class = lines[..first_hero]
                    .iter()
                    .filter(|l| attr(l, "class") == attr(hero, "class"));
                for other in same_class {
                    assert!(
                        num_attr(hero, "stroke-width") > num_attr(other, "stroke-width"),
                        "{hero} vs {other}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_legend_is_right_of_the_plot_area() {
        let svg = svg(&report());
        let frames = tags(&svg, "rect")
            .into_iter()
            .filter(|r| attr(r, "class") == Some("plot-frame"))
            .map(|r| num_attr(r, "x") + num_attr(r, "width"))
            .fold(0.0, f64::max);
        assert_eq!(frames, RIGHT);
        let legend = group(&svg, "legend");
        for name in ["smartscale", "prototype", "oracle", "demand"] {
            assert!(legend.contains(name), "{name} missing from {legend}");
        }
        let mut xs = 0;
        for tag in tags(legend, "line").into_iter().chain(tags(legend, "text")) {
            for a in ["x", "x1", "x2"] {
                if let Some(x) = attr(tag, a) {
                    assert!(x.parse::<f64>().unwrap() > RIGHT, "{tag}");
                    xs += 1;
                }
            }
        }
        assert!(xs >= 3 * 4, "{xs} legend positions");
    }

    #[test]
    fn two_panels_share_the_time_axis_and_pending_has_a_line_per_policy() {
        let r = report();
        let svg = svg(&r);
        let frames: Vec<&str> = tags(&svg, "rect")
            .into_iter()
            .filter(|r| attr(r, "class") == Some("plot-frame"))
            .collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(attr(frames[0], "x"), attr(frames[1], "x"));
        assert_eq!(attr(frames[0], "width"), attr(frames[1], "width"));
        let (nodes_bottom, pending_top) = (
            num_attr(frames[0], "y") + num_attr(frames[0], "height"),
            num_attr(frames[1], "y"),
        );
        assert!(pending_top > nodes_bottom, "pending panel is below nodes");

        let pending = tags(group(&svg, "pending-panel"), "polyline");
        let mut names: Vec<&str> = pending
            .iter()
            .map(|l| attr(l, "data-policy").unwrap())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["oracle", "prototype", "smartscale"]);
        // Nodes: demand, plus desired and Ready per policy.
        assert_eq!(
            tags(group(&svg, "nodes-panel"), "polyline").len(),
            1 + 2 * 3
        );
        // Both panels have axis labels and ticks in hours and counts.
        for panel in ["nodes-panel", "pending-panel"] {
            let g = group(&svg, panel);
            for tick in [">0 h<", ">1 h<", ">2 h<", ">0<"] {
                assert!(g.contains(tick), "{panel} lacks {tick}");
            }
        }
        assert!(group(&svg, "nodes-panel").contains(">nodes</text>"));
        assert!(group(&svg, "pending-panel").contains(">pods pending</text>"));
        assert!(svg.contains("(hours)"));
    }

    #[test]
    fn pods_pending_lift_that_policys_line_and_only_its() {
        let svg = svg(&report());
        let frame = tags(&svg, "rect")
            .into_iter()
            .rfind(|r| attr(r, "class") == Some("plot-frame"))
            .unwrap();
        let (top, bottom) = (
            num_attr(frame, "y"),
            num_attr(frame, "y") + num_attr(frame, "height"),
        );
        for line in tags(group(&svg, "pending-panel"), "polyline") {
            let ys: Vec<f64> = points(line).into_iter().map(|p| p.1).collect();
            assert!(ys.iter().all(|y| (top..=bottom).contains(y)), "{line}");
            let lifted = ys.iter().any(|y| *y < bottom - 1.0);
            assert_eq!(
                lifted,
                attr(line, "data-policy") == Some("prototype"),
                "{line}"
            );
        }
    }

    #[test]
    fn self_contained_escaped_and_deterministic() {
        let r = report();
        let svg = svg(&r);
        assert_eq!(svg, super::svg(&r));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
        for external in ["<script", "href", "@import", "url(", "@font-face"] {
            assert!(!svg.contains(external), "{external}");
        }
        // An empty report still draws two empty panels rather than dividing by zero.
        let empty = super::svg(&Report {
            timelines: vec![],
            demand: vec![],
            ..r
        });
        assert!(!empty.contains("NaN") && !empty.contains("inf"));
        assert_eq!(empty.matches("class=\"plot-frame\"").count(), 2);
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(24.0, 5.0), 5.0);
        assert_eq!(nice_step(7.35, 5.0), 2.0);
        assert_eq!(hour_step(12.0), 2.0);
        assert_eq!(hour_step(24.0), 3.0);
        assert_eq!(hour_step(0.5), 0.1);
        assert_eq!(num(0.30000000000000004), "0.3");
        assert_eq!(num(12.0), "12");
        let p = Panel::new("p", 0.0, 100.0, 24.0);
        assert_eq!((p.y_step, p.y_max), (5.0, 30.0));
    }
}
