//! One parameter in several places of a module: [`tie_shared_params`].
//!
//! A parameter shared by several layers (the same [`ParamId`] more than once in a module, e.g.
//! one weight quantizer's `α`, `β` and thresholds in every layer: [`Granularity::Shared`](
//! crate::Granularity::Shared)) is one parameter only while every place holds the same tensor:
//! then autodiff sums every place's gradient into that tensor, Burn's `GradientsParams` takes
//! it once, and an optimizer steps it once. Burn's optimizers map the module and take each
//! gradient once, so after a step only the first place (in the module's visiting order) holds
//! the new value; a record loaded into a module gives every place its own tensor. Tying makes
//! every later place hold the first place's tensor again.

use std::any::Any;
use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// `module` with every parameter that occurs more than once holding the tensor of its first
/// occurrence (in visiting order, the order Burn's optimizers step in). A module without
/// repeated parameters comes back as it was; only the repeated ones are touched (their tensors
/// are shared, not copied).
///
/// Call it before a forward pass whose gradients train shared parameters (a clone is enough:
/// the first occurrences' tensors are the module's own, so its gradients are found through
/// the module itself), and after every optimizer step.
pub fn tie_shared_params<B: Backend, M: Module<B>>(module: M) -> M {
    let mut count = Count::default();
    module.visit(&mut count);
    if count.0.values().all(|&n| n < 2) {
        return module;
    }
    let shared = count
        .0
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(id, _)| (id, None))
        .collect();
    module.map(&mut Tie::<B> {
        first: shared,
        backend: std::marker::PhantomData,
    })
}

/// How often each float parameter occurs.
#[derive(Default)]
struct Count(HashMap<ParamId, usize>);

impl<B: Backend> ModuleVisitor<B> for Count {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        *self.0.entry(param.id).or_default() += 1;
    }
}

/// The first tensor of each repeated parameter (a `Tensor<B, D>` behind `Any`: the rank is the
/// parameter's own).
struct Tie<B> {
    first: HashMap<ParamId, Option<Box<dyn Any>>>,
    backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleMapper<B> for Tie<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(slot) = self.first.get_mut(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let tensor = match slot {
            None => {
                *slot = Some(Box::new(tensor.clone()));
                tensor
            }
            Some(first) => first
                .downcast_ref::<Tensor<B, D>>()
                .cloned()
                // A repeated id with another rank is not one parameter: left as it is.
                .unwrap_or(tensor),
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::module::{Module, Param};
    use burn::optim::{GradientsParams, Optimizer, SgdConfig};
    use burn::tensor::Tensor;

    use super::tie_shared_params;
    use crate::testing::TestAutodiffBackend as A;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 1>>,
    }

    fn values(t: Tensor<A, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32 values")
    }

    /// `L = Σ a·x1 + Σ b·x2` with `b` the same parameter as `a`: tied, its gradient is
    /// `x1 + x2` and one SGD step (rate 1) takes it to `a0 − x1 − x2` in both places; untied (a
    /// record loaded into the module gives each place its own tensor), the gradient of the
    /// second place overwrites the first's and the places drift apart.
    #[test]
    fn a_repeated_parameter_gets_the_sum_of_its_gradients_and_one_value() {
        let device = Default::default();
        let a0 = [1.0f32, 2.0];
        let (x1, x2) = ([0.5f32, -1.0], [0.25f32, 3.0]);
        let param = Param::from_tensor(Tensor::<A, 1>::from_floats(a0, &device));
        let step = |two: Two<A>| {
            let loss = (two.a.val() * Tensor::from_floats(x1, &device)).sum()
                + (two.b.val() * Tensor::from_floats(x2, &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &two);
            let mut sgd = SgdConfig::new().init::<A, Two<A>>();
            sgd.step(1.0, two, grads)
        };
        let tied = Two {
            a: param.clone(),
            b: param.clone(),
        };
        let stepped = tie_shared_params(step(tie_shared_params(tied)));
        let expected = vec![1.0 - 0.5 - 0.25, 2.0 + 1.0 - 3.0];
        assert_eq!(values(stepped.a.val()), expected);
        assert_eq!(values(stepped.b.val()), expected);
        assert_eq!(stepped.a.id, stepped.b.id);

        // Separate tensors under one id (what loading a record gives): tying first restores
        // the shared parameter; without it the step is wrong.
        let loaded = || Two {
            a: Param::initialized(param.id, Tensor::from_floats(a0, &device).require_grad()),
            b: Param::initialized(param.id, Tensor::from_floats(a0, &device).require_grad()),
        };
        let fixed = tie_shared_params(step(tie_shared_params(loaded())));
        assert_eq!(values(fixed.b.val()), expected);
        let broken = step(loaded());
        assert_ne!(values(broken.a.val()), expected);
    }
}
