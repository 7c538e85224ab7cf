//! Every quantizer's state (α, β, level set, weight-level occupancy), read from a model.

use burn::tensor::Tensor;
use quantnet_burn::QuantBackend;

use crate::models::QatModel;

/// One quantizer's state: scales, level set and (for weight quantizers) the fraction of the
/// layer's weights at each level.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    /// The slot's name (as in [`crate::models::QatModel::slots`]).
    pub name: String,
    /// "conv", "linear" or "activation".
    pub kind: String,
    /// The level set's name.
    pub levels: String,
    /// `α` (per-channel scales: their mean).
    pub alpha: f32,
    /// `β` (per-channel scales: their mean).
    pub beta: f32,
    /// How many per-channel scales `alpha` and `beta` average (`None`: one per tensor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// Fraction of the weights at each level (weight quantizers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupancy: Option<Vec<f32>>,
}

/// α, β and the weight-level occupancy of every quantizer of `model`, in slot order.
///
/// # Errors
/// [`crate::Error::ReadBack`] if values cannot be read back from the device;
/// [`crate::Error::Layer`] if a weight cannot be matched to its levels.
pub fn layer_stats<B: QuantBackend, M: QatModel<B>>(model: &M) -> crate::Result<Vec<LayerStats>> {
    // One value, or the mean of per-channel scales.
    let scalar = |t: Tensor<B, 1>, what: &str| -> crate::Result<f32> {
        let v = crate::quantize::read_f32(t.into_data(), what)?;
        Ok(if v.is_empty() {
            f32::NAN
        } else {
            v.iter().sum::<f32>() / v.len() as f32
        })
    };
    let mut model = model.clone();
    let slots = model.slots();
    let mut out = Vec::new();
    for (name, mut layer) in slots.weights {
        // Only quantized layers' weights are read: reading a lazily initialised weight would
        // initialise it here, changing the order the random initialisation is drawn in.
        let Some(q) = layer.quantizer().clone() else {
            continue;
        };
        let weight = layer.weight();
        // The scales the quantizer applies (BWN/TWN compute them from the weights; LSQ, PACT
        // and DSQ tie β to 1/α).
        let p = q.params_for(&weight);
        let channels = q.channel_axis().map(|_| p.alpha.dims()[0]);
        out.push(LayerStats {
            channels,
            kind: layer.kind().into(),
            levels: q.level_set().name(),
            alpha: scalar(p.alpha, "α")?,
            beta: scalar(p.beta, "β")?,
            occupancy: layer
                .occupancy()
                .transpose()
                .map_err(|source| crate::Error::Layer {
                    layer: name.clone(),
                    source,
                })?,
            name,
        });
    }
    for (name, slot) in slots.acts {
        if let Some(q) = &slot.quantizer {
            let p = q.params();
            out.push(LayerStats {
                kind: "activation".into(),
                levels: q.level_set().name(),
                alpha: scalar(p.alpha, "α")?,
                beta: scalar(p.beta, "β")?,
                channels: None,
                occupancy: None,
                name,
            });
        }
    }
    Ok(out)
}
