//! PNG charts (plotters, with the DejaVu font embedded in the binary): line charts with a legend
//! for `quantnet plot` and `quantnet sweep`, and weight histograms with the quantizer's levels and
//! thresholds drawn on them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Series colours (matplotlib's first ten, which most readers know).
pub(crate) const COLORS: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// One line of a chart.
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<(f64, f64)>,
    pub(crate) color: RGBColor,
    /// Drawn dashed (references such as full precision).
    pub(crate) dashed: bool,
}

/// A line chart: title, axis names, lines, and optional names for integer x positions.
pub(crate) struct LineChart {
    pub(crate) title: String,
    pub(crate) x_desc: String,
    pub(crate) y_desc: String,
    pub(crate) series: Vec<Series>,
    pub(crate) x_names: Option<Vec<String>>,
}

/// One histogram: values, the levels `α·y_k` (solid) and the thresholds `b_i/β` (dashed), or
/// with `normalised` the values `β_c·w`, the levels `y_k·α_c·β_c` and the thresholds `b_i`
/// (per-channel scales).
pub(crate) struct Histogram {
    pub(crate) title: String,
    pub(crate) values: Vec<f32>,
    pub(crate) levels: Vec<f32>,
    pub(crate) thresholds: Vec<f32>,
    pub(crate) normalised: bool,
}

/// One panel's drawing area.
pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// The size of one panel of [`save`]'s grid, in pixels.
pub(crate) const PANEL: (u32, u32) = (640, 420);

pub(crate) fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {e:?}")
}

/// Checks that a picture can be written to `path`: a `.png` name in a folder that exists
/// (plotters reports a missing folder as a nested debug dump, so it is checked first).
///
/// # Errors
/// One line naming `path`.
pub(crate) fn check_png(path: &Path) -> Result<()> {
    if path.extension().and_then(|e| e.to_str()) != Some("png") {
        bail!("{}: the picture must be a .png file", path.display());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
        bail!(
            "{}: the folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Draws `panels` into `path` (a grid of `columns` panels, each `panel` pixels wide and high,
/// e.g. [`PANEL`]), through a temporary file and a rename: no half-written picture.
pub(crate) fn save<F>(
    path: &Path,
    panels: usize,
    columns: usize,
    panel: (u32, u32),
    mut draw: F,
) -> Result<()>
where
    F: FnMut(usize, &Area) -> Result<()>,
{
    check_png(path)?;
    // The bitmap backend draws text with ab_glyph; the font travels inside the binary.
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded DejaVu Sans font failed to load"))?;
    let columns = columns.clamp(1, panels.max(1));
    let rows = panels.div_ceil(columns).max(1);
    let tmp = path.with_extension("partial.png");
    {
        let size = (panel.0 * columns as u32, panel.1 * rows as u32);
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        for (i, area) in root.split_evenly((rows, columns)).iter().enumerate() {
            if i < panels {
                draw(i, area)?;
            }
        }
        root.present().map_err(draw_err)?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
}

/// Draws the legend of `c`'s labelled series at `position`, in `font_size` points, on a
/// translucent white box.
pub(crate) fn legend<'a, CT>(
    c: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Result<()>
where
    CT: plotters::coord::CoordTranslate,
{
    c.configure_series_labels()
        .position(position)
        .label_font(("sans-serif", font_size))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

/// The range of `values` with 8 % padding (a flat range gets ±1).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(if hi > lo { 1e-9 } else { 1.0 });
    (lo - pad, hi + pad)
}

/// Draws a line chart into one panel.
pub(crate) fn lines(area: &Area, chart: &LineChart) -> Result<()> {
    let (x0, x1) = padded(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
    );
    let (y0, y1) = padded(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    let mut c = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    let names = chart.x_names.clone();
    let x_label = move |x: &f64| match &names {
        Some(names) => {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        }
        // Epochs and other counts: integer ticks only.
        None if (x - x.round()).abs() < 1e-6 => format!("{}", x.round()),
        None => String::new(),
    };
    let mut mesh = c.configure_mesh();
    mesh.x_desc(&chart.x_desc)
        .y_desc(&chart.y_desc)
        .label_style(("sans-serif", 14))
        .x_label_formatter(&x_label);
    if let Some(names) = &chart.x_names {
        mesh.x_labels(names.len() * 4 + 1);
    }
    mesh.draw().map_err(draw_err)?;
    for s in &chart.series {
        let style = s.color.stroke_width(2);
        if s.dashed {
            c.draw_series(DashedLineSeries::new(s.points.clone(), 8, 6, style))
                .map_err(draw_err)?
        } else {
            c.draw_series(LineSeries::new(s.points.clone(), style))
                .map_err(draw_err)?
        }
        .label(&s.label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        // A marker per point, unless the points are dense enough to draw a curve (steps).
        if !s.dashed && s.points.len() <= 100 {
            c.draw_series(
                s.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, s.color.filled())),
            )
            .map_err(draw_err)?;
        }
    }
    legend(&mut c, SeriesLabelPosition::LowerRight, 14)
}

/// Draws a histogram (60 bins) with its levels and thresholds into one panel.
pub(crate) fn histogram(area: &Area, h: &Histogram) -> Result<()> {
    let finite = || h.values.iter().copied().filter(|v| v.is_finite());
    let marks = h.levels.iter().chain(&h.thresholds).copied();
    let lo = finite().chain(marks.clone()).fold(f32::INFINITY, f32::min);
    let hi = finite().chain(marks).fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if lo < hi {
        (lo as f64, hi as f64)
    } else {
        (-1.0, 1.0)
    };
    let pad = (hi - lo) * 0.04;
    let (lo, hi) = (lo - pad, hi + pad);
    const BINS: usize = 60;
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0u32; BINS];
    for v in finite() {
        let i = (((v as f64) - lo) / width) as usize;
        counts[i.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut c = ChartBuilder::on(area)
        .caption(&h.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0.0..top)
        .map_err(draw_err)?;
    c.configure_mesh()
        .disable_mesh()
        .x_desc(if h.normalised {
            "normalised weight β_c·w"
        } else {
            "weight"
        })
        .y_desc("count")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(draw_err)?;
    let bar = COLORS[0].mix(0.6).filled();
    c.draw_series(counts.iter().enumerate().map(|(i, &n)| {
        let x = lo + i as f64 * width;
        Rectangle::new([(x, 0.0), (x + width, n as f64)], bar)
    }))
    .map_err(draw_err)?;
    let level = COLORS[3].stroke_width(2);
    c.draw_series(
        h.levels
            .iter()
            .map(|&l| PathElement::new(vec![(l as f64, 0.0), (l as f64, top)], level)),
    )
    .map_err(draw_err)?
    .label(if h.normalised {
        "levels y·α_c·β_c (mean)"
    } else {
        "levels α·y"
    })
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], level));
    let threshold = BLACK.stroke_width(1);
    for &t in &h.thresholds {
        c.draw_series(DashedLineSeries::new(
            vec![(t as f64, 0.0), (t as f64, top)],
            6,
            4,
            threshold,
        ))
        .map_err(draw_err)?;
    }
    c.draw_series(std::iter::once(PathElement::new(
        Vec::<(f64, f64)>::new(),
        threshold,
    )))
    .map_err(draw_err)?
    .label(if h.normalised {
        "thresholds b"
    } else {
        "thresholds b/β"
    })
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], threshold));
    legend(&mut c, SeriesLabelPosition::UpperRight, 13)
}
