//! The plots' tests: the scatter SVGs, their frontier and their log axes.
use super::svg::{frontier, log_axis, scatter, Point};
use super::tests::balanced;

fn pt(series: &str, label: &str, x: f64, y: f64) -> Point {
    Point {
        series: series.into(),
        label: label.into(),
        x,
        y,
        full: true,
    }
}

/// A row that did not run every problem is drawn hollow and kept off the dashed frontier,
/// even where it would be on it.
#[test]
fn svg_frontier_leaves_out_partial_rows() {
    let mut cheap = pt("b", "b@1", 1.0, 90.0);
    cheap.full = false;
    let pts = [
        cheap,
        pt("a", "a@1", 2.0, 10.0),
        pt("a", "a@2", 4.0, 50.0),
        pt("a", "a@4", 8.0, 40.0),
    ];
    let svg = scatter("t", "x", &pts);
    assert!(balanced(&svg));
    let dashed = svg
        .lines()
        .find(|l| l.contains("stroke-dasharray"))
        .expect("a frontier");
    // a@1 → a@2 only (a@4 is dearer and less accurate; b@1 is partial).
    let points = dashed
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 2, "{dashed}");
    assert!(
        svg.contains("hollow: a row that did not run every problem"),
        "{svg}"
    );
    let hollow = |l: &&str| l.contains("<circle") && l.contains("fill=\"#ffffff\"");
    assert_eq!(svg.lines().filter(hollow).count(), 1);
    // With b@1 full it leads the frontier, alone (nothing dearer is more accurate).
    let mut all = pts.clone();
    all[0].full = true;
    let svg = scatter("t", "x", &all);
    assert!(!svg.contains("stroke-dasharray"), "one point: no line");
}

#[test]
fn svg_edge_cases() {
    let one = scatter("t", "x", &[pt("baseline", "baseline@6", 3.3e12, 10.0)]);
    assert!(one.starts_with("<svg") && balanced(&one));
    assert_eq!(one.matches("<circle").count(), 1);
    assert!(!one.contains("<polyline"), "one point, no line");

    let none = scatter(
        "t",
        "x",
        &[
            pt("a", "a@1", 0.0, 5.0),
            pt("a", "a@2", f64::NAN, 5.0),
            pt("a", "a@3", 1.0, f64::NAN),
        ],
    );
    assert!(
        balanced(&none)
            && none.contains("Skipped 3 point(s)")
            && none.contains("no points to plot")
    );
    assert_eq!(none.matches("<circle").count(), 0);
    assert!(!none.contains("NaN\""), "no NaN coordinates");

    let same = scatter(
        "A & B <c>",
        "x",
        &[
            pt("x<&>", "x<&>@1", 5.0, 0.0),
            pt("x<&>", "x<&>@2", 5.0, 0.0),
            pt("combined", "combined@6", 5.0, 100.0),
        ],
    );
    assert!(balanced(&same), "{same}");
    assert!(same.contains("A &amp; B &lt;c&gt;") && same.contains("x&lt;&amp;&gt;@2"));
    assert_eq!(same.matches("<circle").count(), 3);
    assert_eq!(same.matches("<polyline").count(), 1);
    assert!(!same.contains("NaN") && !same.contains("inf"), "{same}");
}

/// The frontier keeps the points more accurate than every cheaper one, whatever their method
/// or order; a method's budget line may fall, the frontier never does.
#[test]
fn the_frontier_is_the_points_no_cheaper_point_matches() {
    let pts = [
        (4.0, 50.0),
        (1.0, 10.0),
        (2.0, 30.0),
        (3.0, 20.0),
        (2.0, 40.0),
        (5.0, 50.0),
        (6.0, 70.0),
    ];
    assert_eq!(frontier(&pts), [1, 4, 0, 6]);
    assert!(frontier(&[]).is_empty());
    let svg = scatter(
        "t",
        "x",
        &[
            pt("baseline", "baseline@1", 1e10, 100.0),
            pt("baseline", "baseline@2", 2e10, 50.0),
            pt("rebase", "rebase@1", 5e9, 0.0),
            pt("rebase", "rebase@2", 0.0, 50.0),
        ],
    );
    assert!(balanced(&svg), "{svg}");
    // Two methods' lines (rebase has one point left) and the dashed frontier.
    assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
    assert_eq!(
        svg.matches("stroke-dasharray").count(),
        2,
        "line and legend"
    );
    assert!(
        svg.contains("not shown (x ≤ 0 or not finite): rebase@2"),
        "{svg}"
    );
}

#[test]
fn log_ticks() {
    let labels = |lo, hi| {
        log_axis(lo, hi)
            .2
            .into_iter()
            .map(|t| t.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(3.0e12, 4.0e12), ["2e12", "5e12"]);
    assert_eq!(labels(1.5, 40.0), ["1", "2", "5", "10", "20", "50"]);
    assert_eq!(
        labels(0.02, 3000.0),
        ["0.01", "0.1", "1", "10", "100", "1000"]
    );
    let (l0, l1, t) = log_axis(1e9, 1e14);
    assert!(l0 < 9.0 && l1 > 14.0);
    assert_eq!(t.len(), 6);
    let (l0, l1, t) = log_axis(7.0, 7.0);
    assert!(l0 < 7f64.log10() && l1 > 7f64.log10() && t.len() >= 2);
    assert!(
        log_axis(1e-30, 1e30).2.len() <= 13,
        "labels thinned over many decades"
    );
}

/// Many rows at one accuracy (a model that gets nothing right): every label stays inside
/// the plot, none overlaps another, those without room are counted, and every point still
/// names itself in its tooltip.
#[test]
fn crowded_labels_stay_inside_the_plot() {
    let pts: Vec<Point> = (0..16)
        .map(|i| {
            let (m, b) = (
                ["baseline", "rebase", "quiet-star", "combined"][i % 4],
                1 << (i / 4),
            );
            pt(m, &format!("{m}@{b}"), 1e12 * (1.0 + 0.2 * i as f64), 0.0)
        })
        .collect();
    let svg = scatter("t", "x", &pts);
    assert!(balanced(&svg), "{svg}");
    assert_eq!(
        svg.matches("<title>").count(),
        1 + 16,
        "the plot's and each point's"
    );
    let num = |l: &str, attr: &str| -> f64 {
        l.split(&format!(" {attr}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let labels: Vec<(f64, f64, f64)> = svg
        .lines()
        .filter(|l| {
            l.starts_with("<text") && l.contains("font-size=\"11\" fill=\"#") && l.contains("@")
        })
        .map(|l| {
            let text = l.split('>').nth(1).unwrap().split('<').next().unwrap();
            let w = 6.2 * text.chars().count() as f64;
            let x = num(l, "x");
            let x0 = if l.contains("text-anchor=\"end\"") {
                x - w
            } else {
                x
            };
            (x0, num(l, "y"), w)
        })
        .collect();
    assert!(!labels.is_empty());
    for (i, &(x, y, w)) in labels.iter().enumerate() {
        assert!(
            (55.0..=406.0).contains(&y),
            "label at y {y} is outside the plot:\n{svg}"
        );
        for &(x2, y2, w2) in &labels[..i] {
            let overlap = (y - y2).abs() < 12.0 && x < x2 + w2 && x2 < x + w;
            assert!(!overlap, "labels at ({x}, {y}) and ({x2}, {y2}) overlap");
        }
    }
    let hidden = 16 - labels.len();
    if hidden > 0 {
        assert!(svg.contains(&format!("{hidden} label(s) left out where points crowd")));
    }
}
