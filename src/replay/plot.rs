//! The replay's plot (plotters, SVG): throughput per second on top, commit
//! and read latency percentiles below, on one time axis.
//!
//! ```text
//!  [SecondPoint] ─▶ rates = counts / seconds covered ─▶ ┌ per second ┐
//!                                                      └ latency ms ┘ ─▶ plot.svg
//! ```
//!
//! A run seldom ends on a whole second: its last bucket covers less. Counts
//! are divided by the time each bucket covers, so that bucket is not drawn
//! as a drop, and a bucket shorter than [`SHORTEST_BUCKET`] is left out,
//! its rate being mostly noise.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::replay::report::SecondPoint;

/// Buckets covering less than this many seconds are not drawn.
pub const SHORTEST_BUCKET: f64 = 0.5;

const SIZE: (u32, u32) = (900, 640);

const BLUE_DARK: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BLUE_LIGHT: RGBColor = RGBColor(0xae, 0xc7, 0xe8);
const GREEN_DARK: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const ORANGE_DARK: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const ORANGE_LIGHT: RGBColor = RGBColor(0xff, 0xbb, 0x78);

/// One line of a panel: its legend, colour and points.
pub(crate) struct Line {
    pub name: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Writes `series` as an SVG at `path`.
pub fn write_svg(path: &Path, title: &str, series: &[SecondPoint]) -> Result<()> {
    let drawn: Vec<&SecondPoint> = series
        .iter()
        .filter(|p| p.seconds >= SHORTEST_BUCKET)
        .collect();
    let line = |name: &str, colour, value: fn(&SecondPoint) -> f64| Line {
        name: name.to_owned(),
        colour,
        points: drawn
            .iter()
            .map(|p| (p.second as f64 + p.seconds / 2.0, value(p)))
            .collect(),
    };
    let throughput = [
        line("commits/s", BLUE_DARK, |p| p.commits as f64 / p.seconds),
        line("mutations/s", GREEN_DARK, |p| {
            p.mutations as f64 / p.seconds
        }),
        line("reads/s", ORANGE_DARK, |p| p.reads as f64 / p.seconds),
    ];
    let latency = [
        line("commit p50", BLUE_DARK, |p| ms(p.commit_p50_us)),
        line("commit p99", BLUE_LIGHT, |p| ms(p.commit_p99_us)),
        line("read p50", ORANGE_DARK, |p| ms(p.read_p50_us)),
        line("read p99", ORANGE_LIGHT, |p| ms(p.read_p99_us)),
    ];
    let end = series
        .last()
        .map_or(1.0, |p| p.second as f64 + p.seconds)
        .max(1.0);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 16)).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 10);
    panel(&top, "per second", &throughput, end, None)?;
    panel(&bottom, "latency (ms)", &latency, end, Some("seconds"))?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// Draws `lines` into `area` over `0..end` seconds, the y axis from 0 to
/// a little above the highest point.
pub(crate) fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    label: &str,
    lines: &[Line],
    end: f64,
    x_label: Option<&str>,
) -> Result<()> {
    let max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        // Headroom, so that the legend in the upper right covers no line.
        * 1.35;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(if x_label.is_some() { 36 } else { 20 })
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .y_desc(label)
        .x_desc(x_label.unwrap_or(""))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick_label(*y))
        .draw()
        .map_err(plot_error)?;
    for line in lines {
        let colour = line.colour;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// Round values as people write them: 12k, 350, 2, 0.25.
fn tick_label(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 10.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

pub(crate) fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(second: u64, seconds: f64, commits: u64) -> SecondPoint {
        SecondPoint {
            second,
            seconds,
            commits,
            mutations: commits * 4,
            reads: commits / 2,
            commit_p50_us: 800,
            commit_p99_us: 2_400,
            read_p50_us: 300,
            read_p99_us: 900,
        }
    }

    #[test]
    fn the_plot_is_an_svg_with_its_title_legend_and_round_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        let series: Vec<SecondPoint> = (0..10).map(|s| point(s, 1.0, 4_922)).collect();
        write_svg(&path, "a <test>", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt;"), "the title, escaped");
        for name in [
            "commits/s",
            "mutations/s",
            "reads/s",
            "commit p99",
            "read p50",
        ] {
            assert!(svg.contains(name), "{name} in the legend");
        }
        // Throughput peaks at 19,688 mutations/s; every tick is a round
        // number (two significant digits at most), none the data's own.
        let ticks: Vec<f64> = svg
            .lines()
            .map(str::trim)
            .filter_map(|text| match text.strip_suffix('k') {
                Some(thousands) => thousands.parse::<f64>().ok().map(|t| t * 1e3),
                None => text.parse::<f64>().ok(),
            })
            .collect();
        assert!(ticks.iter().any(|t| *t >= 10_000.0), "{ticks:?}");
        for tick in &ticks {
            let digits = format!("{}", (tick * 100.0).round() as u64);
            let significant = digits.trim_end_matches('0').len();
            assert!(significant <= 2, "tick {tick} is not round: {ticks:?}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 0.25, 0.5, 2.0, 12.0, 350.0, 12_000.0]
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(labels, ["0", "0.25", "0.5", "2", "12", "350", "12k"]);
    }

    #[test]
    fn a_partial_last_second_is_a_rate_and_a_sliver_is_left_out() {
        let full = point(0, 1.0, 1_000);
        let half = point(1, 0.5, 500);
        let sliver = point(2, 0.1, 3);
        let rate = |p: &SecondPoint| p.commits as f64 / p.seconds;
        assert_eq!(rate(&half), rate(&full), "half a second at the same rate");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        write_svg(&path, "t", &[full, half, sliver]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        // Three lines per panel... drawn through two points each.
        let lines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
        assert!(!lines.is_empty());
        assert!(
            lines.iter().all(|l| l.matches(',').count() == 2),
            "each line has the two drawn points: {lines:?}"
        );
    }
}
