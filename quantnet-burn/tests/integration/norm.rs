//! The batch-norm op ([`quantnet_burn::op::batch_norm`]): its backward against finite differences
//! on every backend, and outputs, gradients and running statistics against Burn's `BatchNorm`.

use burn::module::{AutodiffModule, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use quantnet_burn::QuantBackend;
use quantnet_burn::op::batch_norm;

use crate::common::{Lcg, central_differences_along, to_vec};
use crate::on_each_backend;
use crate::reference::assert_close;

/// Input shapes: images (`[n, c, h, w]`) and a flat layer's output (`[n, c]`, one position).
const SHAPES: [&[usize]; 2] = [&[3, 4, 3, 2], &[5, 3]];

#[derive(Clone)]
struct Values {
    shape: Vec<usize>,
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    w_loss: Vec<f64>,
}

impl Values {
    fn new(shape: &[usize], rng: &mut Lcg) -> Self {
        let n: usize = shape.iter().product();
        Self {
            shape: shape.to_vec(),
            x: rng.uniform_vec(n, -2.0, 3.0),
            gamma: rng.uniform_vec(shape[1], 0.5, 1.5),
            beta: rng.uniform_vec(shape[1], -0.5, 0.5),
            w_loss: rng.uniform_vec(n, -1.0, 1.0),
        }
    }
}

fn module<B: Backend>(v: &Values, device: &B::Device, dtype: DType) -> BatchNorm<B> {
    let mut bn = BatchNormConfig::new(v.shape[1]).init::<B>(device);
    let param = |values: &[f64]| {
        Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            (device, dtype),
        ))
    };
    bn.gamma = param(&v.gamma);
    bn.beta = param(&v.beta);
    bn
}

/// `values` as a tensor of `v`'s shape.
fn input<B: Backend, const D: usize>(
    v: &Values,
    values: &[f64],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    let shape = <[usize; D]>::try_from(v.shape.clone()).expect("rank");
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, dtype))
}

/// The loss `Σ w ⊙ norm(x)` and `(dL/dx, dL/dγ, dL/dβ)`, through ours or Burn's forward.
fn loss_and_grads<B: AutodiffBackend + QuantBackend, const D: usize>(
    ours: bool,
    v: &Values,
    device: &B::Device,
    dtype: DType,
) -> (f64, [Vec<f64>; 3], BatchNorm<B>) {
    let bn = module::<B>(v, device, dtype);
    let x = input::<B, D>(v, &v.x, device, dtype).require_grad();
    let y = if ours {
        batch_norm(&bn, x.clone())
    } else {
        bn.forward(x.clone())
    };
    let w = input::<B, D>(v, &v.w_loss, device, dtype);
    let loss = (y * w).sum();
    let value = to_vec(loss.clone())[0];
    let grads = loss.backward();
    let g = [
        to_vec(x.grad(&grads).expect("tracked")),
        to_vec(bn.gamma.grad(&grads).expect("tracked")),
        to_vec(bn.beta.grad(&grads).expect("tracked")),
    ];
    (value, g, bn)
}

fn check_rank<B: AutodiffBackend + QuantBackend, const D: usize>(
    v: &Values,
    device: &B::Device,
    dtype: DType,
) {
    let (eps, rtol, atol) = if dtype == DType::F64 {
        (1e-6, 1e-6, 1e-8)
    } else {
        (1e-2, 3e-2, 3e-3)
    };
    let loss = |v: &Values| loss_and_grads::<B, D>(true, v, device, dtype).0;
    let (_, got, _) = loss_and_grads::<B, D>(true, v, device, dtype);
    let along = |pick| central_differences_along(v, pick, eps, loss);
    let fd = [
        along(|v| &mut v.x),
        along(|v| &mut v.gamma),
        along(|v| &mut v.beta),
    ];
    for (name, (g, f)) in ["dL/dx", "dL/dgamma", "dL/dbeta"]
        .iter()
        .zip(got.iter().zip(&fd))
    {
        assert_close(&format!("{:?} {name}", v.shape), g, f, rtol, atol);
    }
}

fn batch_norm_gradients_match_finite_differences<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) {
    let mut rng = Lcg::new(37);
    check_rank::<B, 4>(&Values::new(SHAPES[0], &mut rng), device, dtype);
    check_rank::<B, 2>(&Values::new(SHAPES[1], &mut rng), device, dtype);
}
on_each_backend!(batch_norm_gradients_match_finite_differences);

/// On flex in f32: the same outputs, gradients, running statistics and inference outputs as
/// Burn's `BatchNorm`, to rounding.
#[test]
fn flex_batch_norm_equals_burns_in_f32() {
    type B = burn::backend::Autodiff<crate::common::Flex>;
    let device = Default::default();
    let mut rng = Lcg::new(41);
    let v = Values::new(&[4, 3, 5, 5], &mut rng);
    let (loss, got, ours) = loss_and_grads::<B, 4>(true, &v, &device, DType::F32);
    let (loss_burn, want, burns) = loss_and_grads::<B, 4>(false, &v, &device, DType::F32);
    assert_close("loss", &[loss], &[loss_burn], 1e-5, 1e-5);
    for (name, (g, w)) in ["dL/dx", "dL/dgamma", "dL/dbeta"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        assert_close(name, g, w, 1e-4, 1e-5);
    }
    let stats = |bn: &BatchNorm<B>| {
        [
            to_vec(bn.running_mean.value_sync()),
            to_vec(bn.running_var.value_sync()),
        ]
    };
    let (a, b) = (stats(&ours), stats(&burns));
    assert_close("running mean", &a[0], &b[0], 1e-5, 1e-6);
    assert_close("running var", &a[1], &b[1], 1e-5, 1e-6);
    // Not the initial values: the update happened.
    assert!(a[0].iter().any(|m| m.abs() > 1e-3), "running mean updated");

    // Inference (no autodiff): the running statistics, ours and Burn's.
    let (ours, burns) = (ours.valid(), burns.valid());
    let x = input::<crate::common::Flex, 4>(&v, &v.x, &device, DType::F32);
    let y = to_vec(batch_norm(&ours, x.clone()));
    let y_burn = to_vec(burns.forward(x));
    assert_close("inference output", &y, &y_burn, 1e-5, 1e-5);
}
