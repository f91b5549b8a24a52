//! A hand-written SVG 1.1 scatter plot: log-scale x, linear y (accuracy %), one colour per
//! series (method), the points of a series joined in the given order.
use std::fmt::Write as _;

/// One point of a plot.
#[derive(Clone, Debug)]
pub struct Point {
    /// The series (method) it belongs to: its colour, its line, its legend entry.
    pub series: String,
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Its row ran every problem of the report: only such rows compare, so only they can
    /// be on the compute frontier.
    pub full: bool,
}

const W: f64 = 720.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 560.0;
const TOP: f64 = 45.0;
const BOTTOM: f64 = 410.0;
const FONT: &str = "font-family=\"sans-serif\"";

/// Text safe inside SVG elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The colours of the study's four methods; other series take [`OTHERS`] in order.
fn fixed_colour(series: &str) -> Option<&'static str> {
    match series {
        "baseline" => Some("#1f77b4"),
        "quiet-star" => Some("#d62728"),
        "rebase" => Some("#2ca02c"),
        "combined" => Some("#9467bd"),
        _ => None,
    }
}

const OTHERS: [&str; 6] = [
    "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
];

/// A tick's label: `m·10^k` as a plain number for moderate k, else `me k`.
fn tick_label(m: u32, k: i32) -> String {
    if (0..=5).contains(&k) {
        format!("{}", m as u64 * 10u64.pow(k as u32))
    } else if (-3..0).contains(&k) {
        format!("{:.*}", (-k) as usize, m as f64 * 10f64.powi(k))
    } else {
        format!("{m}e{k}")
    }
}

/// The log10 range of the x axis and its ticks (value, label) for positive values in
/// `[min, max]`: powers of ten, plus 2 and 5 of each decade when the range is narrow.
pub fn log_axis(min: f64, max: f64) -> (f64, f64, Vec<(f64, String)>) {
    let (mut l0, mut l1) = (min.log10(), max.log10());
    if l1 - l0 < 1e-9 {
        l0 -= 0.5;
        l1 += 0.5;
    }
    let pad = 0.06 * (l1 - l0);
    l0 -= pad;
    l1 += pad;
    let narrow = l1 - l0 < 3.0;
    let mantissas: &[u32] = if narrow { &[1, 2, 5] } else { &[1] };
    let candidates = |lo: f64, hi: f64| {
        let mut v = Vec::new();
        for k in (lo.floor() as i32 - 1)..=(hi.ceil() as i32 + 1) {
            for &m in mantissas {
                v.push((k as f64 + (m as f64).log10(), m, k));
            }
        }
        v
    };
    if narrow {
        // Snap the ends out to the nearest 1-2-5 ticks so that the axis always has two.
        let c = candidates(l0, l1);
        l0 = c
            .iter()
            .map(|t| t.0)
            .filter(|&t| t <= l0 + 1e-9)
            .fold(f64::MIN, f64::max);
        l1 = c
            .iter()
            .map(|t| t.0)
            .filter(|&t| t >= l1 - 1e-9)
            .fold(f64::MAX, f64::min);
    }
    let decades = (l1.floor() - l0.ceil()) as i32 + 1;
    let every = ((decades + 9) / 10).max(1);
    let ticks = candidates(l0, l1)
        .into_iter()
        .filter(|&(t, _, k)| t >= l0 - 1e-9 && t <= l1 + 1e-9 && k.rem_euclid(every) == 0)
        .map(|(t, m, k)| (t, tick_label(m, k)))
        .collect();
    (l0, l1, ticks)
}

/// The y axis from 0 (or below, for negative values) to a round top, with its step.
fn linear_axis(min: f64, max: f64) -> (f64, f64, f64) {
    let lo = if min < 0.0 { min } else { 0.0 };
    let hi = max.max(lo);
    let span = (hi - lo).max(1e-9) * 1.05;
    let mut step = 1.0;
    'find: for k in -2..12 {
        for m in [1.0, 2.0, 5.0] {
            step = m * 10f64.powi(k);
            if span / step <= 8.0 {
                break 'find;
            }
        }
    }
    let lo = (lo / step).floor() * step;
    let mut top = ((lo + span) / step).ceil() * step;
    if hi <= 100.0 && top > 100.0 && (100.0 / step).fract() == 0.0 {
        top = 100.0;
    }
    if hi - lo < 1e-9 && max <= 0.0 {
        (lo, lo + 10.0, 2.0)
    } else {
        (lo, top, step)
    }
}

fn num(x: f64) -> String {
    format!("{x:.1}")
}

/// The plot as a standalone SVG 1.1 document. Points with x ≤ 0 or a non-finite x or y
/// cannot be drawn on a log axis: they are left out and named in the `<desc>`.
pub fn scatter(title: &str, x_title: &str, points: &[Point]) -> String {
    let (good, bad): (Vec<&Point>, Vec<&Point>) = points
        .iter()
        .partition(|p| p.x.is_finite() && p.x > 0.0 && p.y.is_finite());
    let (xmin, xmax) = good
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.x), b.max(p.x)));
    let (ymin, ymax) = good
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.y), b.max(p.y)));
    let (l0, l1, xticks) = if good.is_empty() {
        log_axis(1.0, 10.0)
    } else {
        log_axis(xmin, xmax)
    };
    let (y0, y1, ystep) = if good.is_empty() {
        (0.0, 100.0, 20.0)
    } else {
        linear_axis(ymin, ymax)
    };
    let px = |x: f64| LEFT + (x.log10() - l0) / (l1 - l0) * (RIGHT - LEFT);
    let py = |y: f64| BOTTOM - (y - y0) / (y1 - y0) * (BOTTOM - TOP);

    let mut s = String::new();
    writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\">"
    )
    .unwrap();
    writeln!(s, "<title>{}</title>", escape(title)).unwrap();
    let mut desc = format!("{} point(s) plotted", good.len());
    for p in &good {
        write!(desc, "; {}: x={}, y={:.2}%", p.label, p.x, p.y).unwrap();
    }
    desc.push('.');
    if !bad.is_empty() {
        write!(desc, " Skipped {} point(s) with x ≤ 0 or a value that is not finite (a log axis cannot show them):", bad.len())
            .unwrap();
        for p in &bad {
            write!(desc, " {} (x={}, y={});", p.label, p.x, p.y).unwrap();
        }
    }
    writeln!(s, "<desc>{}</desc>", escape(&desc)).unwrap();
    writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>"
    )
    .unwrap();
    writeln!(
        s,
        "<text x=\"{}\" y=\"26\" text-anchor=\"middle\" {FONT} font-size=\"16\">{}</text>",
        num((LEFT + RIGHT) / 2.0),
        escape(title)
    )
    .unwrap();

    // Grid, ticks and tick labels.
    for (t, label) in &xticks {
        let x = num(LEFT + (t - l0) / (l1 - l0) * (RIGHT - LEFT));
        writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{BOTTOM}\" stroke=\"#e0e0e0\"/>"
        )
        .unwrap();
        writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{BOTTOM}\" x2=\"{x}\" y2=\"{}\" stroke=\"#000000\"/>",
            BOTTOM + 5.0
        )
        .unwrap();
        writeln!(
            s,
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" {FONT} font-size=\"11\">{}</text>",
            BOTTOM + 18.0,
            escape(label)
        )
        .unwrap();
    }
    let nsteps = ((y1 - y0) / ystep).round() as i64;
    for i in 0..=nsteps {
        let v = y0 + i as f64 * ystep;
        let y = num(py(v));
        writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{RIGHT}\" y2=\"{y}\" stroke=\"#e0e0e0\"/>"
        )
        .unwrap();
        writeln!(
            s,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{LEFT}\" y2=\"{y}\" stroke=\"#000000\"/>",
            LEFT - 5.0
        )
        .unwrap();
        let decimals = if ystep >= 1.0 {
            0
        } else {
            (-ystep.log10()).ceil() as usize
        };
        writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" {FONT} font-size=\"11\">{v:.decimals$}</text>", LEFT - 8.0, num(py(v) + 4.0))
            .unwrap();
    }
    writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#000000\"/>",
        RIGHT - LEFT,
        BOTTOM - TOP
    )
    .unwrap();
    writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" {FONT} font-size=\"13\">{}</text>",
        num((LEFT + RIGHT) / 2.0),
        H - 25.0,
        escape(x_title)
    )
    .unwrap();
    let yc = num((TOP + BOTTOM) / 2.0);
    writeln!(s, "<text x=\"22\" y=\"{yc}\" text-anchor=\"middle\" transform=\"rotate(-90 22 {yc})\" {FONT} font-size=\"13\">accuracy (%)</text>")
        .unwrap();
    if good.is_empty() {
        writeln!(s, "<text x=\"{}\" y=\"{yc}\" text-anchor=\"middle\" {FONT} font-size=\"13\">no points to plot</text>", num((LEFT + RIGHT) / 2.0))
            .unwrap();
    }

    // Series in order of first appearance, each with its colour.
    let mut series: Vec<(&str, &'static str)> = Vec::new();
    let mut others = 0;
    for p in points {
        if !series.iter().any(|(n, _)| *n == p.series) {
            let c = fixed_colour(&p.series).unwrap_or_else(|| {
                others += 1;
                OTHERS[(others - 1) % OTHERS.len()]
            });
            series.push((p.series.as_str(), c));
        }
    }
    for (name, c) in &series {
        let pts: Vec<String> = good
            .iter()
            .filter(|p| p.series == *name)
            .map(|p| format!("{},{}", num(px(p.x)), num(py(p.y))))
            .collect();
        if pts.len() >= 2 {
            writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\"/>",
                pts.join(" ")
            )
            .unwrap();
        }
    }
    // The compute frontier over every method: the points that no cheaper point matches,
    // among the rows that ran every problem (a row of fewer problems does not compare).
    let full: Vec<&Point> = good.iter().copied().filter(|p| p.full).collect();
    let hull = frontier(&full.iter().map(|p| (p.x, p.y)).collect::<Vec<_>>());
    if hull.len() >= 2 {
        let pts: Vec<String> = hull
            .iter()
            .map(|&i| format!("{},{}", num(px(full[i].x)), num(py(full[i].y))))
            .collect();
        writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#555555\" stroke-width=\"1.5\" \
             stroke-dasharray=\"5,4\"/>",
            pts.join(" ")
        )
        .unwrap();
    }
    if good.iter().any(|p| !p.full) {
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"11\" fill=\"#555555\">hollow: a row \
             that did not run every problem (off the frontier)</text>",
            LEFT + 6.0,
            TOP + 14.0
        )
        .unwrap();
    }
    // Points a log axis cannot show are named inside the plot, not only in <desc>.
    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().map(|p| p.label.as_str()).collect();
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"11\" fill=\"#aa0000\">not shown (x ≤ 0 \
             or not finite): {}</text>",
            LEFT + 6.0,
            BOTTOM - 8.0,
            escape(&names.join(", "))
        )
        .unwrap();
    }
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    let mut hidden = 0;
    for p in &good {
        let c = series
            .iter()
            .find(|(n, _)| *n == p.series)
            .map_or("#000000", |(_, c)| c);
        let (cx, cy) = (px(p.x), py(p.y));
        // A row that did not run every problem is hollow: off the frontier, said below.
        let (fill, stroke) = if p.full {
            (c, "#000000")
        } else {
            ("#ffffff", c)
        };
        // The point's own tooltip names it, whether or not its label finds room.
        writeln!(
            s,
            "<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"><title>{}: x={}, y={:.2}%</title></circle>",
            num(cx),
            num(cy),
            escape(&p.label),
            p.x,
            p.y
        )
        .unwrap();
        // Labels: right of the point (left near the right edge), at the first free height of
        // above, below, further above, … inside the plot; none where every one is taken (many
        // rows at one accuracy), rather than over the axis.
        let w = 6.2 * p.label.chars().count() as f64;
        let (mut lx, anchor) = if cx + 7.0 + w > RIGHT + 5.0 {
            (cx - 7.0 - w, "end")
        } else {
            (cx + 7.0, "start")
        };
        let free = |ly: f64| {
            (TOP + 10.0..=BOTTOM - 4.0).contains(&ly)
                && !placed
                    .iter()
                    .any(|&(x, y, pw)| (y - ly).abs() < 12.0 && lx < x + pw && x < lx + w)
        };
        let slot = (0..16)
            .map(|k| {
                let step = 13.0 * (k / 2) as f64;
                if k % 2 == 0 {
                    cy - 7.0 - step
                } else {
                    cy + 17.0 + step
                }
            })
            .find(|&ly| free(ly));
        let Some(ly) = slot else {
            hidden += 1;
            continue;
        };
        placed.push((lx, ly, w));
        if anchor == "end" {
            lx += w;
        }
        writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\" {FONT} font-size=\"11\" fill=\"{c}\">{}</text>", num(lx), num(ly), escape(&p.label))
            .unwrap();
    }
    if hidden > 0 {
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"11\" fill=\"#555555\">{hidden} label(s) \
             left out where points crowd: a point's tooltip names it</text>",
            LEFT + 6.0,
            TOP + 28.0
        )
        .unwrap();
    }

    // Legend, in the right margin (swatches are rects, so circles count the points).
    let lx = RIGHT + 20.0;
    writeln!(
        s,
        "<text x=\"{lx}\" y=\"{}\" {FONT} font-size=\"12\" font-weight=\"bold\">method</text>",
        TOP + 10.0
    )
    .unwrap();
    for (i, (name, c)) in series.iter().enumerate() {
        let y = TOP + 30.0 + 20.0 * i as f64;
        writeln!(s, "<line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"1.5\"/>", lx + 24.0).unwrap();
        writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/>",
            lx + 7.0,
            y - 5.0
        )
        .unwrap();
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"12\">{}</text>",
            lx + 30.0,
            y + 4.0,
            escape(name)
        )
        .unwrap();
    }
    if hull.len() >= 2 {
        let y = TOP + 30.0 + 20.0 * series.len() as f64;
        writeln!(s, "<line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#555555\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\"/>", lx + 24.0).unwrap();
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" {FONT} font-size=\"12\">frontier</text>",
            lx + 30.0,
            y + 4.0
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

/// The compute frontier of (cost, accuracy) points: indices, by rising cost, of the points
/// more accurate than every cheaper one (of points at one cost, the most accurate).
pub fn frontier(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut best = f64::NEG_INFINITY;
    order
        .into_iter()
        .filter(|&i| {
            let keep = points[i].1 > best;
            best = best.max(points[i].1);
            keep
        })
        .collect()
}
