//! Plain progress lines for burn-train's renderer: about ten per epoch, with the epoch's running
//! metrics (what the CLI and the examples print).

use burn::train::metric::MetricId;
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

/// Prints `PHASE epoch E/N train|test (hard) P% (i/n)  metrics` about ten times per epoch.
/// Per-layer α/β/occupancy metrics go to the logs and the report, not to these lines.
pub struct PlainRenderer {
    quiet: bool,
    phase: String,
    names: Vec<(MetricId, String)>,
    metrics: Vec<(MetricId, String)>,
    last: Option<(usize, usize, bool)>,
}

impl PlainRenderer {
    /// A renderer whose lines start with `phase`.
    pub fn new(phase: &str) -> Self {
        Self {
            quiet: false,
            phase: phase.to_string(),
            names: Vec::new(),
            metrics: Vec::new(),
            last: None,
        }
    }

    /// Prints nothing when `quiet` (burn-train's default renderer would print its own).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// One line to stdout: the only place the library prints.
    #[allow(clippy::print_stdout)]
    pub(crate) fn say(line: std::fmt::Arguments<'_>) {
        println!("{line}");
    }

    fn update(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(e) | MetricState::Numeric(e, _) => e,
        };
        let per_layer = self.names.iter().any(|(id, name)| {
            *id == entry.metric_id
                && ["alpha ", "beta ", "occupancy "]
                    .iter()
                    .any(|p| name.starts_with(p))
        });
        if per_layer {
            return;
        }
        // burn-train formats numeric metrics as "epoch X - batch Y": keep the epoch's value.
        let text = entry.serialized_entry.formatted;
        let value = text
            .split(" - ")
            .next()
            .unwrap_or(&text)
            .trim_start_matches("epoch ")
            .to_string();
        match self
            .metrics
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some(slot) => slot.1 = value,
            None => self.metrics.push((entry.metric_id, value)),
        }
    }

    fn render(&mut self, valid: bool, item: &TrainingProgress) {
        let Some(progress) = &item.progress else {
            return;
        };
        if self.quiet {
            return;
        }
        let total = progress.items_total.max(1);
        let decile = progress.items_processed * 10 / total;
        let epoch = item.global_progress.items_processed;
        if self.last == Some((epoch, decile, valid)) || (valid && progress.items_processed < total)
        {
            return;
        }
        self.last = Some((epoch, decile, valid));
        let metrics: Vec<String> = self
            .metrics
            .iter()
            .map(|(id, value)| {
                let name = self
                    .names
                    .iter()
                    .find(|(i, _)| i == id)
                    .map_or("?", |(_, n)| n.as_str());
                format!("{name} {value}")
            })
            .collect();
        Self::say(format_args!(
            "{} epoch {}/{} {} {:>3}% ({}/{})  {}",
            self.phase,
            epoch,
            item.global_progress.items_total,
            if valid { "test (hard)" } else { "train" },
            progress.items_processed * 100 / total,
            progress.items_processed,
            progress.items_total,
            metrics.join("  ")
        ));
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        if self.last.is_some_and(|(_, _, valid)| valid) {
            // The first training update after a validation: drop the test metrics.
            self.metrics.clear();
        }
        self.update(state);
    }
    fn update_valid(&mut self, state: MetricState) {
        if self.last.is_some_and(|(_, _, valid)| !valid) {
            // The first validation update: show the test metrics, not the training ones.
            self.metrics.clear();
            self.last = None;
        }
        self.update(state);
    }
    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(false, &item);
    }
    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(true, &item);
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn render_test(&mut self, _: EvaluationProgress, _: Vec<ProgressType>) {}
    fn update_test(&mut self, _: EvaluationName, _: MetricState) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: burn::train::metric::MetricDefinition) {
        self.names.push((definition.metric_id, definition.name));
    }
}

/// Makes the progress renderer of a training phase from its name (`"pretrain"`, `"quantized"`,
/// `"train"`): a user's replacement for [`PlainRenderer`] in [`super::Qat::renderer`] (and
/// [`crate::detect::DetectQat::renderer`]), for instance burn-train's TUI or a logger.
#[derive(Clone)]
pub struct Renderers(std::sync::Arc<MakeRenderer>);

/// What [`Renderers`] holds: a phase's name to its renderer.
type MakeRenderer = dyn Fn(&str) -> Box<dyn MetricsRenderer> + Send + Sync;

impl Renderers {
    /// `make` builds each phase's renderer from the phase's name.
    pub fn new(make: impl Fn(&str) -> Box<dyn MetricsRenderer> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(make))
    }

    /// The renderer of `phase`: the user's when given, else [`PlainRenderer`] (silent when
    /// `quiet`).
    pub(crate) fn for_phase(made: Option<&Self>, phase: &str, quiet: bool) -> Boxed {
        Boxed(match made {
            Some(make) => (make.0)(phase),
            None => Box::new(PlainRenderer::new(phase).quiet(quiet)),
        })
    }
}

impl std::fmt::Debug for Renderers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renderers(..)")
    }
}

/// A boxed renderer handed to burn-train, which takes one by value.
pub(crate) struct Boxed(Box<dyn MetricsRenderer>);

impl MetricsRendererTraining for Boxed {
    fn update_train(&mut self, state: MetricState) {
        self.0.update_train(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.0.update_valid(state);
    }

    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.0.render_train(item, progress);
    }

    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.0.render_valid(item, progress);
    }

    fn on_train_end(
        &mut self,
        summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.0.on_train_end(summary)
    }
}

impl MetricsRendererEvaluation for Boxed {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.0.update_test(name, state);
    }

    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        self.0.render_test(item, progress);
    }

    fn on_test_end(
        &mut self,
        summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.0.on_test_end(summary)
    }
}

impl MetricsRenderer for Boxed {
    fn manual_close(&mut self) {
        self.0.manual_close();
    }

    fn register_metric(&mut self, definition: burn::train::metric::MetricDefinition) {
        self.0.register_metric(definition);
    }
}
