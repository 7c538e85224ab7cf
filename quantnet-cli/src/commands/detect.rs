//! Detectors on the command line: `quantnet train --model ssd-small|ssd300 --dataset voc`
//! (the library's [`DetectQat`]), `quantnet eval` of a detector run (test mAP), and
//! `quantnet detect` (images with their detected boxes drawn).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use quantnet_burn::{QatBackend, QuantBackend, QuantMode};
use quantnet_models::Model;
use quantnet_models::detect::boxes::nms;
use quantnet_models::detect::{
    DetectData, DetectParams, DetectQat, DetectSet, Detector, MapScores, VocImage, detect_set,
    evaluate_map,
};
use quantnet_models::quantize::{self, Temperatures};
use serde::{Deserialize, Serialize};

use crate::backend::{DeviceList, WithBackend, dispatch};
use crate::cli::DetectArgs;
use crate::run::{RunConfig, load_run, write_atomic};

/// A detector run's `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DetectSummary {
    pub(crate) model: String,
    pub(crate) dataset: String,
    pub(crate) backend: String,
    /// The devices that trained it (`--devices`; one when not given).
    #[serde(default)]
    pub(crate) devices: Vec<String>,
    pub(crate) weights: String,
    pub(crate) acts: String,
    pub(crate) epochs: usize,
    pub(crate) pretrain_epochs: usize,
    /// The object classes.
    pub(crate) classes: Vec<String>,
    pub(crate) train_images: usize,
    pub(crate) test_images: usize,
    pub(crate) test_boxes: usize,
    /// VOC07 11-point mAP (%, IoU 0.5) of the full-precision detector this run pretrained.
    pub(crate) test_map_fp: Option<f64>,
    /// VOC07 11-point mAP (%), hard-quantized: the detector's mAP.
    pub(crate) test_map_hard: f64,
    /// With the soft quantizers at the final temperatures (a diagnostic; quantized runs).
    pub(crate) test_map_soft: Option<f64>,
    /// All-point mAP (%) of the same detections, hard-quantized.
    pub(crate) test_map_hard_all_points: f64,
    /// 11-point mAP (%) on the training samples (whole, not augmented), hard-quantized: how
    /// well the detector fits what it trained on.
    pub(crate) train_map_hard: Option<f64>,
    /// The same for the pretrained full-precision detector.
    pub(crate) train_map_fp: Option<f64>,
    /// 11-point AP (%) of each class, hard-quantized (`null`: no box of the class).
    pub(crate) test_ap_hard: Vec<Option<f64>>,
    /// The full scores of each evaluated network.
    pub(crate) scores: Scores,
    /// Training loss of each main-phase epoch.
    pub(crate) train_loss: Vec<f64>,
    /// Validation mAP (%, hard) of each main-phase epoch.
    pub(crate) valid_map: Vec<f64>,
    pub(crate) seconds_per_epoch: Vec<f64>,
    pub(crate) temperature: crate::run::Temperatures,
    pub(crate) layers: Vec<quantnet_models::train::LayerStats>,
}

/// Every evaluation of a detector run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Scores {
    pub(crate) fp: Option<MapScores>,
    pub(crate) hard: MapScores,
    pub(crate) soft: Option<MapScores>,
}

impl DetectSummary {
    fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialising the summary")?;
        write_atomic(&dir.join("summary.json"), text.as_bytes())
    }
}

/// The detection data of `cfg` from `dir`, classes merged as asked; prints what it read.
fn load_data(cfg: &RunConfig, dir: &Path) -> Result<DetectData> {
    // A finished run's class list (its model's outputs) is fixed: another folder's names then
    // must be among them, in the run's order.
    let fixed = cfg
        .classes
        .as_deref()
        .filter(|_| cfg.merge_classes.is_none());
    let data = match (cfg.split_windows, cfg.tile) {
        (true, Some(side)) => DetectData::load_windows(dir, fixed, side)?,
        (_, Some(side)) => DetectData::load(dir, fixed)?.tiled(side),
        (_, None) => DetectData::load(dir, fixed)?,
    };
    let data = match &cfg.merge_classes {
        Some(name) => data.merge_classes(name),
        None => data,
    };
    let augment = quantnet_models::detect::Augment {
        max_expand: cfg.max_expand,
        ..Default::default()
    };
    let data = DetectData {
        train: data.train.with_augment(augment),
        ..data
    };
    // The images the samples come from.
    let images = |set: &DetectSet| {
        let mut of: Vec<usize> = set.samples.iter().map(|s| s.image).collect();
        of.dedup();
        of.len()
    };
    let windows = |set: &DetectSet| match cfg.tile {
        Some(side) => format!(
            " in {} {}windows of {side}×{side}",
            set.len(),
            if cfg.split_windows { "disjoint " } else { "" }
        ),
        None => String::new(),
    };
    println!(
        "{} from {}: {} training images{} ({} boxes), {} test images{} ({} boxes), classes {}{}",
        cfg.dataset,
        dir.display(),
        images(&data.train),
        windows(&data.train),
        data.train.boxes(),
        images(&data.test),
        windows(&data.test),
        data.test.boxes(),
        data.train.classes.join(", "),
        match (data.clipped, data.skipped) {
            (0, 0) => String::new(),
            (c, s) => format!("; {c} box(es) clipped to their image, {s} empty one(s) skipped"),
        }
    );
    Ok(data)
}

struct TrainJob {
    cfg: RunConfig,
    data: DetectData,
    out: PathBuf,
    backend: String,
    devices: Vec<String>,
}

impl WithBackend for TrainJob {
    type Output = DetectSummary;

    fn run<B: QatBackend>(self, device: B::Device) -> Result<DetectSummary> {
        self.run_on::<B>(vec![device])
    }

    fn run_on<B: QatBackend>(self, devices: Vec<B::Device>) -> Result<DetectSummary> {
        let Self {
            cfg,
            data,
            out,
            backend,
            devices: names,
        } = self;
        let device = devices.first().context("no device")?.clone();
        let recipe = cfg.recipe()?;
        B::seed(&device, cfg.seed);
        let model = match &cfg.from {
            // A finished detector run (full precision, say): quantized from its final model.
            Some(from) => {
                let temps = Temperatures::default();
                // Loaded on the autodiff backend, then made inner: parameters stay trainable.
                let (from_cfg, model) = load_run::<B>(from, &temps, &device)?;
                let mut model = model.valid();
                quantize::attach(&mut model, &temps);
                if from_cfg.model != cfg.model || from_cfg.classes != cfg.classes {
                    bail!(
                        "--from {}: a {} for the classes {:?}, not a {} for {:?}",
                        from.display(),
                        from_cfg.model,
                        from_cfg.classes.unwrap_or_default(),
                        cfg.model,
                        cfg.classes.clone().unwrap_or_default()
                    );
                }
                println!(
                    "starting from {} ({})",
                    from.display(),
                    from_cfg.precision_tag()
                );
                model
            }
            None => Model::<B::InnerBackend>::new(cfg.model, cfg.input(), &device),
        };
        let quantized = !recipe.policy.is_float();
        let (model, report) = DetectQat::new(recipe, &out)
            .repeats(cfg.repeats)
            .run_on::<B, _>(model, &data.train, &data.test, &devices)?;
        let hard = report.map_hard.context("the run evaluated nothing")?;
        Ok(DetectSummary {
            model: cfg.model.to_string(),
            dataset: cfg.dataset.to_string(),
            backend,
            devices: names,
            weights: cfg.weights.to_string(),
            acts: cfg.acts.to_string(),
            epochs: cfg.epochs,
            pretrain_epochs: if quantized && cfg.from.is_none() {
                cfg.pretrain_epochs
            } else {
                0
            },
            classes: data.train.classes.clone(),
            train_images: report.train_images,
            test_images: report.test_images,
            test_boxes: report.test_boxes,
            test_map_fp: report.map_fp.as_ref().map(|s| s.map),
            test_map_hard: hard.map,
            test_map_soft: report.map_soft.as_ref().map(|s| s.map),
            test_map_hard_all_points: hard.map_all_points,
            train_map_hard: report.train_map_hard.as_ref().map(|s| s.map),
            train_map_fp: report.train_map_fp.as_ref().map(|s| s.map),
            test_ap_hard: hard.per_class.clone(),
            scores: Scores {
                fp: report.map_fp,
                hard,
                soft: report.map_soft,
            },
            train_loss: report.train_loss,
            valid_map: report.valid_map,
            seconds_per_epoch: report.seconds_per_epoch,
            temperature: crate::run::Temperatures {
                weights: report.temperatures.0,
                acts: report.temperatures.1,
            },
            layers: quantnet_models::train::layer_stats(&model)?,
        })
    }
}

/// `quantnet train` for a detector: the run directory is `out` (config.toml already written).
pub(crate) fn train(
    mut cfg: RunConfig,
    out: &Path,
    data_dir: &Path,
    list: DeviceList,
) -> Result<()> {
    let data = load_data(&cfg, data_dir)?;
    // The classes are the model's output: recorded so that the run's model can be rebuilt.
    cfg.classes = Some(data.train.classes.clone());
    cfg.validate()?;
    cfg.write(out)?;
    let summary = dispatch(
        list.clone(),
        TrainJob {
            cfg,
            data,
            out: out.to_path_buf(),
            backend: list.backend.name().into(),
            devices: list.names(),
        },
    )?;
    summary.write(out)?;
    let per_epoch = summary.seconds_per_epoch.iter().sum::<f64>()
        / summary.seconds_per_epoch.len().max(1) as f64;
    let fp = summary
        .test_map_fp
        .map_or(String::new(), |m| format!("   (full precision: {m:.2}%)"));
    println!(
        "test mAP (VOC07, IoU 0.5, hard-quantized): {:.2}%{fp}   (soft, diagnostic: {})   {:.1} s/epoch",
        summary.test_map_hard,
        summary
            .test_map_soft
            .map_or("-".into(), |m| format!("{m:.2}%")),
        per_epoch
    );
    println!("wrote {}/{{model.mpk,summary.json}}", out.display());
    Ok(())
}

/// `quantnet eval` of a detector run: the test mAP, hard and soft.
pub(crate) fn eval_run(run: &Path, data_dir: Option<&Path>, list: DeviceList) -> Result<()> {
    struct Job {
        run: PathBuf,
        data_dir: Option<PathBuf>,
    }
    impl WithBackend for Job {
        type Output = (MapScores, MapScores);

        fn run<B: QatBackend>(self, device: B::Device) -> Result<(MapScores, MapScores)> {
            let temps = Temperatures::default();
            let (cfg, mut model) = load_run::<B::InnerBackend>(&self.run, &temps, &device)?;
            cfg.set_final_temperatures(&temps);
            let dir = match self.data_dir.or(cfg.data_dir.clone()) {
                Some(d) => d,
                None => super::data::locate(cfg.dataset, None)?,
            };
            let data = load_data(&cfg, &dir)?;
            let batch = cfg.batch_size;
            let hard = evaluate_map(&model, &data.test, batch, &device)?;
            quantize::set_mode(&mut model, QuantMode::Soft);
            let soft = evaluate_map(&model, &data.test, batch, &device)?;
            Ok((hard, soft))
        }
    }
    let (hard, soft) = dispatch(
        list,
        Job {
            run: run.to_path_buf(),
            data_dir: data_dir.map(Path::to_path_buf),
        },
    )?;
    println!(
        "test mAP (VOC07 11-point, IoU 0.5): hard-quantized {:.2}% (all-point {:.2}%)   soft, \
         diagnostic: {:.2}%",
        hard.map, hard.map_all_points, soft.map
    );
    Ok(())
}

/// `quantnet detect`.
pub(crate) fn run(args: DetectArgs) -> Result<()> {
    for image in &args.images {
        if !image.is_file() {
            bail!("{}: no such image", image.display());
        }
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let list = args.target.list();
    dispatch(list, DrawJob { args })
}

struct DrawJob {
    args: DetectArgs,
}

impl WithBackend for DrawJob {
    type Output = ();

    fn run<B: QatBackend>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let (model, classes, tile) = load_detector::<B::InnerBackend>(&args, &device)?;
        let Some(kind) = model.kind() else {
            bail!("the model is a classifier, not a detector (ssd-small, ssd300)");
        };
        let images: Vec<VocImage> = args
            .images
            .iter()
            .map(|path| {
                let (w, h) = image::image_dimensions(path)
                    .with_context(|| format!("{}: not a readable image", path.display()))?;
                Ok(VocImage {
                    image: path.clone(),
                    annotation: path.clone(),
                    size: (w, h),
                    objects: Vec::new(),
                })
            })
            .collect::<Result<_>>()?;
        let tile = args.tile.or(tile);
        let set = DetectSet::new(classes.clone(), images);
        let set = match tile {
            Some(side) => set.tiled(side),
            None => set,
        };
        let params = DetectParams {
            min_score: args.min_score,
            ..DetectParams::default()
        };
        let detections = detect_set(&model, &set, 1, params, &device)?;
        println!(
            "{} on {} image(s){} at {}×{}, boxes scoring at least {}:",
            match kind {
                quantnet_models::detect::SsdKind::Small => "ssd-small",
                quantnet_models::detect::SsdKind::Ssd300 => "ssd300",
            },
            set.images.len(),
            tile.map_or(String::new(), |t| format!(
                " in {} windows of {t}×{t}",
                set.len()
            )),
            kind.image_size(),
            kind.image_size(),
            args.min_score
        );
        // Each sample's boxes in its image's pixels; windows' boxes merged by NMS per class.
        let mut per_image: Vec<Vec<(usize, f32, [f32; 4])>> = vec![Vec::new(); set.images.len()];
        for d in &detections {
            let sample = &set.samples[d.image];
            let [x0, y0, x1, y1] = sample.window;
            let (w, h) = (x1 - x0, y1 - y0);
            per_image[sample.image].push((
                d.class,
                d.score,
                [
                    x0 + d.bbox[0] * w,
                    y0 + d.bbox[1] * h,
                    x0 + d.bbox[2] * w,
                    y0 + d.bbox[3] * h,
                ],
            ));
        }
        if tile.is_some() {
            for found in &mut per_image {
                let mut merged = Vec::new();
                for class in 0..classes.len() {
                    let of: Vec<_> = found.iter().filter(|f| f.0 == class).copied().collect();
                    let boxes: Vec<_> = of.iter().map(|f| f.2).collect();
                    let scores: Vec<_> = of.iter().map(|f| f.1).collect();
                    for k in nms(&boxes, &scores, params.nms, usize::MAX) {
                        merged.push(of[k]);
                    }
                }
                merged.sort_by(|a, b| b.1.total_cmp(&a.1));
                *found = merged;
            }
        }
        for (i, entry) in set.images.iter().enumerate() {
            let mut img = set.pixels(i)?.as_ref().clone();
            let mut csv = String::from("class,score,xmin,ymin,xmax,ymax\n");
            for &(class, score, b) in &per_image[i] {
                draw_box(&mut img, b, PALETTE[class % PALETTE.len()]);
                let name = classes.get(class).map_or("?", String::as_str);
                csv.push_str(&format!(
                    "{name},{score:.4},{:.1},{:.1},{:.1},{:.1}\n",
                    b[0], b[1], b[2], b[3]
                ));
            }
            let stem = entry
                .image
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().to_string());
            let png = args.out.join(format!("{stem}.detections.png"));
            img.save(&png)
                .with_context(|| format!("writing {}", png.display()))?;
            write_atomic(
                &args.out.join(format!("{stem}.detections.csv")),
                csv.as_bytes(),
            )?;
            println!(
                "  {}: {} box(es) -> {}",
                entry.image.display(),
                per_image[i].len(),
                png.display()
            );
        }
        Ok(())
    }
}

/// Box colours by class.
const PALETTE: [[u8; 3]; 6] = [
    [255, 40, 40],
    [40, 220, 255],
    [255, 220, 0],
    [60, 255, 60],
    [255, 60, 255],
    [255, 140, 0],
];

/// A 2-pixel rectangle outline of `b` (pixels) in `colour`.
fn draw_box(img: &mut image::RgbImage, b: [f32; 4], colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let clamp = |v: f32, max: i64| (v.round() as i64).clamp(0, max - 1);
    let (x0, y0, x1, y1) = (
        clamp(b[0], w),
        clamp(b[1], h),
        clamp(b[2], w),
        clamp(b[3], h),
    );
    let mut put = |x: i64, y: i64| {
        if (0..w).contains(&x) && (0..h).contains(&y) {
            img.put_pixel(x as u32, y as u32, image::Rgb(colour));
        }
    };
    for t in 0..2 {
        for x in x0..=x1 {
            put(x, y0 + t);
            put(x, y1 - t);
        }
        for y in y0..=y1 {
            put(x0 + t, y);
            put(x1 - t, y);
        }
    }
}

/// The detector of `--from RUN_DIR` (its final model, classes and window size) or
/// `--model-file` (an exported `.qnet` or Burn-native `.mpk`; classes named by number).
fn load_detector<B: QuantBackend>(
    args: &DetectArgs,
    device: &B::Device,
) -> Result<(Model<B>, Vec<String>, Option<u32>)> {
    if let Some(file) = &args.model_file {
        let native = file.extension().is_some_and(|e| e == "mpk");
        let (header, model) = if native {
            let (m, model) = quantnet_models::export::load_native::<B>(file, device)?;
            (m.header, model)
        } else {
            let (m, model) = quantnet_models::export::load::<B>(file, device)?;
            (m.header, model)
        };
        let classes = (0..header.input.classes)
            .map(|c| format!("class{c}"))
            .collect();
        return Ok((model, classes, None));
    }
    let run = args
        .run
        .as_deref()
        .context("--from RUN_DIR or --model-file FILE")?;
    let temps = Temperatures::default();
    let (cfg, model) = load_run::<B>(run, &temps, device)?;
    let classes = cfg.classes.clone().unwrap_or_else(|| {
        (0..cfg.input().classes)
            .map(|c| format!("class{c}"))
            .collect()
    });
    Ok((model, classes, cfg.tile))
}
