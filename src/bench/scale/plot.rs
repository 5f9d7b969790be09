//! The scaling experiment's plot (plotters, SVG), as 001 draws its own:
//! per workload, operations a second on top and the mean response time
//! below, over the seconds of the run; the third team's servers start at
//! `before` seconds.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::Row;
use crate::replay::plot::{panel, plot_error, Line};

const SIZE: (u32, u32) = (1000, 720);

/// Tableau's ten colours, one per workload.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xae, 0xc7, 0xe8),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xff, 0xbb, 0x78),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x98, 0xdf, 0x8a),
];

pub fn write_svg(path: &Path, before: u64, rows: &[Row]) -> Result<()> {
    let loaded: Vec<&Row> = rows.iter().filter(|r| r.avg_factor.is_some()).collect();
    let lines = |value: fn(&super::Second) -> Option<f64>| -> Vec<Line> {
        loaded
            .iter()
            .zip(COLOURS.iter().cycle())
            .map(|(row, colour)| Line {
                name: format!("{}, {} ms", row.workload, row.think_ms),
                colour: *colour,
                points: row
                    .seconds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| Some((i as f64 + 0.5, value(s)?)))
                    .collect(),
            })
            .collect()
    };
    let throughput = lines(|s| Some(s.ops as f64));
    let response = lines(|s| (s.ops > 0).then(|| s.mean_us as f64 / 1e3));
    let end = loaded
        .iter()
        .map(|r| r.seconds.len() as f64)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let title =
        format!("scaling from two teams to three: the third team's servers start at {before} s");
    let root = root
        .titled(&title, ("sans-serif", 16))
        .map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 10);
    panel(&top, "operations/s", &throughput, end, None)?;
    panel(
        &bottom,
        "mean response (ms)",
        &response,
        end,
        Some("seconds"),
    )?;
    root.present().map_err(plot_error)?;
    Ok(())
}
