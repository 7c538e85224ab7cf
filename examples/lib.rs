//! Runnable examples of quantnet; each lives in its own folder with a README, and is run with
//! `cargo run -p quantnet-examples --example <name>`:
//!
//! - `soft_to_hard`: initialise a weight quantizer from data and watch the soft quantizer turn
//!   into the hard one as the temperature rises.
//! - `qat_your_model`: a model written in the example, quantized by the library recipe
//!   (`quantnet_models::qat`): full precision, then ternary weights and 2-bit activations.
//! - `finetune_existing_model`: a plain Burn CNN trained on MNIST, its layers swapped for quantized
//!   ones, fine-tuned with the temperature hook.
//! - `tabular_regression`: a regression MLP on the red wine quality data, its user's own
//!   burn-train `Learner` with the recipe's parts (ternary weights, 2-bit activations).
//! - `guide_model` (and `guide_model_float`, the code it starts from): the Burn book's guide model
//!   on MNIST, its user's own training code with a `Recipe` added; the README shows the diff.
