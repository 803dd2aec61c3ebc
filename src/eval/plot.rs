//! SVG figures of evaluation results (plotters, SVG backend only).

use plotters::prelude::*;

use super::detection::ScoreSet;
use crate::{Error, Result};

const PALETTE: [RGBColor; 6] = [
    RGBColor(200, 30, 30),
    RGBColor(30, 90, 200),
    RGBColor(20, 150, 60),
    RGBColor(230, 140, 0),
    RGBColor(120, 60, 170),
    RGBColor(90, 90, 90),
];

/// A plotters error as dsg's.
pub(crate) fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("drawing the figure failed: {e}"))
}

/// Normalised histograms (step lines, fraction of each set per bin) of several score sets over
/// `[0, x_max]` in `bins` bins, with a vertical line at each `(label, threshold)`. Returns the SVG.
pub fn score_histograms(
    title: &str,
    x_label: &str,
    sets: &[&ScoreSet],
    thresholds: &[(String, f64)],
    bins: usize,
) -> Result<String> {
    let x_max = sets
        .iter()
        .flat_map(|s| s.scores.iter().copied())
        .chain(thresholds.iter().map(|t| t.1))
        .fold(1e-9f64, f64::max);
    let x_max = if x_max <= 1.0 { 1.0 } else { x_max.ceil() };
    // Scores are ≥ 0 for SAE gates; a probe's logits may be negative.
    let x_min = sets
        .iter()
        .flat_map(|s| s.scores.iter().copied())
        .chain(thresholds.iter().map(|t| t.1))
        .fold(0.0f64, f64::min)
        .floor();
    let width = (x_max - x_min) / bins.max(1) as f64;
    let hist: Vec<Vec<(f64, f64)>> = sets
        .iter()
        .map(|s| {
            let mut counts = vec![0usize; bins.max(1)];
            let last = counts.len() - 1;
            for &v in &s.scores {
                counts[(((v - x_min) / width) as usize).min(last)] += 1;
            }
            let n = s.scores.len().max(1) as f64;
            let mut pts = vec![(x_min, 0.0)];
            for (i, &c) in counts.iter().enumerate() {
                let f = c as f64 / n;
                pts.push((x_min + i as f64 * width, f));
                pts.push((x_min + (i + 1) as f64 * width, f));
            }
            pts.push((x_max, 0.0));
            pts
        })
        .collect();
    let y_max = hist.iter().flatten().map(|p| p.1).fold(0.01f64, f64::max) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..x_max, 0f64..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("fraction of prompts")
            .draw()
            .map_err(plot_err)?;
        for (i, (s, pts)) in sets.iter().zip(hist).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(format!("{} (n={})", s.name, s.scores.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        for (i, (label, t)) in thresholds.iter().enumerate() {
            let style = BLACK.stroke_width(1 + (i == 0) as u32);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*t, 0.0), (*t, y_max)],
                    style,
                )))
                .map_err(plot_err)?
                .label(format!("{label} = {t:.3}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_set_and_threshold() {
        let a = ScoreSet {
            name: "forget".into(),
            scores: vec![0.5, 0.6, 0.7],
        };
        let b = ScoreSet {
            name: "benign".into(),
            scores: vec![0.0, 0.1, 0.1],
        };
        let svg = score_histograms("t", "ρ", &[&a, &b], &[("τ".into(), 0.3)], 20).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("forget (n=3)") && svg.contains("benign (n=3)"));
        assert!(svg.contains("τ = 0.300"));
    }
}
