//! `quantnet quantizer`: the soft and hard quantizer as a CSV or a plot.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use quantnet_burn::{
    GradientMode, LevelSet, QuantParams, check_temperature, hard_quantize, soft_quantize,
};

use quantnet_burn::QatBackend;

use crate::backend::{WithBackend, dispatch};
use crate::cli::{Gradient, QuantizerArgs};

/// The most points one call evaluates (a CSV of 10M lines is already ~400 MB).
const MAX_POINTS: usize = 10_000_000;

/// Temperatures of the plot, as multiples of `--temperature`.
const PLOT_MULTIPLIERS: [f32; 4] = [0.1, 0.3, 1.0, 3.0];

/// The soft quantizer and its derivative at one temperature.
pub(crate) struct SoftCurve {
    pub(crate) temperature: f32,
    pub(crate) soft: Vec<f32>,
    pub(crate) dsoft_dx: Vec<f32>,
}

/// Everything printed or drawn.
pub(crate) struct Curves {
    pub(crate) x: Vec<f32>,
    pub(crate) hard: Vec<f32>,
    pub(crate) soft: Vec<SoftCurve>,
}

struct CurveJob {
    levels: LevelSet,
    alpha: f32,
    beta: f32,
    thresholds: Vec<f32>,
    temperatures: Vec<f32>,
    mode: GradientMode,
    x: Vec<f32>,
}

impl WithBackend for CurveJob {
    type Output = Curves;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<Curves> {
        let params = QuantParams::<B>::new(
            &self.levels,
            self.alpha,
            self.beta,
            &self.thresholds,
            &device,
        )?;
        let xt = Tensor::<B, 1>::from_floats(self.x.as_slice(), &device);
        let to_vec = |t: Tensor<B, 1>| -> Result<Vec<f32>> {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading a result back from the device: {e:?}"))
        };
        let hard = to_vec(hard_quantize(xt.clone(), &params))?;
        let mut soft = Vec::with_capacity(self.temperatures.len());
        for &temperature in &self.temperatures {
            let x = xt.clone().require_grad();
            let y = soft_quantize(x.clone(), &params, temperature, self.mode);
            // Each y_d depends on x_d only, so the gradient of sum(y) is dy_d/dx_d.
            let grads = y.clone().sum().backward();
            let dy = x.grad(&grads).context("the input should have a gradient")?;
            soft.push(SoftCurve {
                temperature,
                soft: to_vec(y)?,
                dsoft_dx: to_vec(Tensor::from_inner(dy))?,
            });
        }
        Ok(Curves {
            x: self.x,
            hard,
            soft,
        })
    }
}

pub(crate) fn run(args: QuantizerArgs) -> Result<()> {
    if !args.csv && args.plot.is_none() {
        bail!("nothing to do: pass --csv to print the curve and/or --plot FILE.png to draw it");
    }
    if let Some(path) = &args.plot {
        // Before any work: a picture that cannot be written is a usage error.
        crate::commands::chart::check_png(path).map_err(|e| anyhow::anyhow!("--plot {e}"))?;
    }
    let levels: LevelSet = args.levels.parse().context("parsing --levels")?;
    check_temperature(args.temperature).context("checking --temperature")?;
    if !(args.x_min.is_finite() && args.x_max.is_finite() && args.x_min < args.x_max) {
        bail!(
            "--x-min ({}) must be finite and smaller than --x-max ({})",
            args.x_min,
            args.x_max
        );
    }
    if !(2..=MAX_POINTS).contains(&args.points) {
        bail!(
            "--points must be between 2 and {MAX_POINTS}, got {}",
            args.points
        );
    }
    let thresholds = args
        .thresholds
        .clone()
        .unwrap_or_else(|| levels.midpoint_thresholds());
    let step = (f64::from(args.x_max) - f64::from(args.x_min)) / (args.points - 1) as f64;
    let x = (0..args.points)
        .map(|i| (f64::from(args.x_min) + step * i as f64) as f32)
        .collect();
    let mut temperatures = vec![args.temperature];
    if args.plot.is_some() {
        temperatures.extend(
            PLOT_MULTIPLIERS
                .iter()
                .map(|m| m * args.temperature)
                .filter(|t| *t != args.temperature),
        );
    }
    let mode = match args.gradient {
        Gradient::Exact => GradientMode::Exact,
        Gradient::Official => GradientMode::official(),
    };
    let job = CurveJob {
        levels: levels.clone(),
        alpha: args.alpha,
        beta: args.beta,
        thresholds,
        temperatures,
        mode,
        x,
    };
    let curves = dispatch(args.backend, job).context("evaluating the quantizer")?;
    if args.csv {
        write_csv(&curves).context("writing the CSV to stdout")?;
    }
    if let Some(path) = &args.plot {
        crate::commands::quantizer::plot::draw(path, &curves, &levels)
            .with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn write_csv(curves: &Curves) -> Result<()> {
    let main = &curves.soft[0];
    let mut out = BufWriter::new(io::stdout().lock());
    let result = (|| -> io::Result<()> {
        writeln!(out, "x,soft,hard,dsoft_dx")?;
        for i in 0..curves.x.len() {
            writeln!(
                out,
                "{},{},{},{}",
                curves.x[i], main.soft[i], curves.hard[i], main.dsoft_dx[i]
            )?;
        }
        out.flush()
    })();
    match result {
        // `quantnet quantizer --csv | head` closes the pipe early: not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

mod plot {
    //! The paper's picture: soft curves at several temperatures over the hard staircase.

    use super::*;
    use crate::commands::chart::{self, Area, COLORS, draw_err as err};
    use plotters::prelude::*;

    pub(super) fn draw(path: &Path, curves: &Curves, levels: &LevelSet) -> Result<()> {
        chart::save(path, 1, 1, (960, 640), |_, area| {
            render(area, curves, levels)
        })
    }

    fn render(root: &Area, curves: &Curves, levels: &LevelSet) -> Result<()> {
        let (x0, x1) = (curves.x[0], curves.x[curves.x.len() - 1]);
        let all = curves
            .hard
            .iter()
            .chain(curves.soft.iter().flat_map(|c| c.soft.iter()));
        let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Quantization Networks: levels {levels}"),
                ("sans-serif", 26),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("x")
            .y_desc("quantized value")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        let points = |ys: &[f32]| {
            curves
                .x
                .iter()
                .copied()
                .zip(ys.iter().copied())
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(points(&curves.hard), BLACK.stroke_width(3)))
            .map_err(err)?
            .label("hard (unit steps)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
        let mut soft: Vec<&SoftCurve> = curves.soft.iter().collect();
        soft.sort_by(|a, b| a.temperature.total_cmp(&b.temperature));
        for (curve, color) in soft.into_iter().zip(COLORS[..4].iter().cycle()) {
            let style = color.stroke_width(2);
            chart
                .draw_series(LineSeries::new(points(&curve.soft), style))
                .map_err(err)?
                .label(format!("soft, T = {}", curve.temperature))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart::legend(&mut chart, SeriesLabelPosition::UpperLeft, 16)
    }
}
