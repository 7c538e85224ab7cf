//! The conv training path ([`quantnet_burn::op::conv2d`]): its backward against finite differences
//! on every backend, and against Burn's own conv backward in f32.
//!
//! `L = Σ w ⊙ conv(x, W, b)` is linear in each of `x`, `W` and `b` taken alone, so a central
//! difference in one coordinate is exact up to rounding: the tolerances only absorb the rounding
//! of the forward pass (f64: `eps = 1e-3`; f32 on wgpu: `eps = 1e-1`).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use quantnet_burn::QuantBackend;
use quantnet_burn::op::conv2d;

use crate::common::{Lcg, central_differences_along, to_vec};
use crate::on_each_backend;
use crate::reference::assert_close;

/// One convolution: input `[n, c, h, w]`, weight `[c_out, c / groups, kh, kw]`, options, bias.
struct Geometry {
    input: [usize; 4],
    weight: [usize; 4],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    bias: bool,
}

impl Geometry {
    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
    }

    fn output(&self) -> [usize; 4] {
        let out = |axis: usize| {
            let k = self.dilation[axis] * (self.weight[2 + axis] - 1) + 1;
            (self.input[2 + axis] + 2 * self.padding[axis] - k) / self.stride[axis] + 1
        };
        [self.input[0], self.weight[0], out(0), out(1)]
    }
}

/// Every case the layers meet (3×3 pad 1 at strides 1 and 2, the 1×1 shortcut at stride 2,
/// LeNet-5's 5×5 without padding), plus dilation, a non-square kernel with unequal strides and
/// paddings, and a grouped conv (Burn's backward, the fallback).
///
/// Geometry 2 (1×1, stride 2) failed on wgpu before `conv2d_input_grad` stopped using Burn
/// 0.21's CubeCL kernel for it: Burn's input gradient (and its transposed conv) gave 0 at the 72
/// of 288 input positions the conv reads, while its forward agreed with flex's.
fn geometries() -> Vec<Geometry> {
    let g = |input, weight, stride, padding, dilation, groups, bias| Geometry {
        input,
        weight,
        stride,
        padding,
        dilation,
        groups,
        bias,
    };
    vec![
        g([2, 3, 6, 5], [4, 3, 3, 3], [1, 1], [1, 1], [1, 1], 1, false),
        g([2, 3, 7, 6], [4, 3, 3, 3], [2, 2], [1, 1], [1, 1], 1, true),
        g([2, 4, 6, 6], [5, 4, 1, 1], [2, 2], [0, 0], [1, 1], 1, false),
        g([1, 2, 9, 8], [3, 2, 5, 5], [1, 1], [0, 0], [1, 1], 1, true),
        g([2, 2, 7, 7], [3, 2, 3, 3], [1, 1], [2, 2], [2, 2], 1, false),
        g([2, 3, 7, 5], [2, 3, 3, 2], [2, 1], [1, 0], [1, 1], 1, true),
        g([2, 4, 5, 5], [4, 2, 3, 3], [1, 1], [1, 1], [1, 1], 2, true),
    ]
}

/// Random `x`, `W`, `b` and loss weights for one geometry.
#[derive(Clone)]
struct Values {
    x: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    w_loss: Vec<f64>,
}

impl Values {
    fn new(geometry: &Geometry, rng: &mut Lcg) -> Self {
        let count = |shape: [usize; 4]| shape.iter().product::<usize>();
        Self {
            x: rng.uniform_vec(count(geometry.input), -1.0, 1.0),
            weight: rng.uniform_vec(count(geometry.weight), -1.0, 1.0),
            bias: rng.uniform_vec(geometry.weight[0], -1.0, 1.0),
            w_loss: rng.uniform_vec(count(geometry.output()), -1.0, 1.0),
        }
    }
}

fn tensor4<B: Backend>(
    values: &[f64],
    shape: [usize; 4],
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, dtype))
}

fn tensor1<B: Backend>(values: &[f64], device: &B::Device, dtype: DType) -> Tensor<B, 1> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        (device, dtype),
    )
}

/// `conv(x, W, b)` through `conv`, the function under test or Burn's.
type Conv<B> = fn(Tensor<B, 4>, Tensor<B, 4>, Option<Tensor<B, 1>>, ConvOptions<2>) -> Tensor<B, 4>;

fn ours<B: QuantBackend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    b: Option<Tensor<B, 1>>,
    o: ConvOptions<2>,
) -> Tensor<B, 4> {
    conv2d(x, w, b, o)
}

fn burns<B: Backend>(
    x: Tensor<B, 4>,
    w: Tensor<B, 4>,
    b: Option<Tensor<B, 1>>,
    o: ConvOptions<2>,
) -> Tensor<B, 4> {
    burn::tensor::module::conv2d(x, w, b, o)
}

/// The loss and its gradients `(dL/dx, dL/dW, dL/db)` through `conv`.
fn loss_and_grads<B: AutodiffBackend>(
    conv: Conv<B>,
    geometry: &Geometry,
    v: &Values,
    device: &B::Device,
    dtype: DType,
) -> (f64, [Vec<f64>; 3]) {
    let x = tensor4::<B>(&v.x, geometry.input, device, dtype).require_grad();
    let w = tensor4::<B>(&v.weight, geometry.weight, device, dtype).require_grad();
    let b = geometry
        .bias
        .then(|| tensor1::<B>(&v.bias, device, dtype).require_grad());
    let y = conv(x.clone(), w.clone(), b.clone(), geometry.options());
    let w_loss = tensor4::<B>(&v.w_loss, geometry.output(), device, dtype);
    assert_eq!(y.dims(), geometry.output(), "output shape");
    let loss = (y * w_loss).sum();
    let value = to_vec(loss.clone())[0];
    let grads = loss.backward();
    let grad = |t: &Tensor<B, 4>| to_vec(t.grad(&grads).expect("tracked"));
    let db = b.map_or_else(Vec::new, |b| to_vec(b.grad(&grads).expect("tracked")));
    (value, [grad(&x), grad(&w), db])
}

/// Central differences of the loss through [`conv2d`], one coordinate at a time.
fn finite_differences<B: AutodiffBackend + QuantBackend>(
    geometry: &Geometry,
    v: &Values,
    device: &B::Device,
    dtype: DType,
    eps: f64,
) -> [Vec<f64>; 3] {
    let loss = |v: &Values| loss_and_grads::<B>(ours::<B>, geometry, v, device, dtype).0;
    let along = |pick| central_differences_along(v, pick, eps, loss);
    let db = if geometry.bias {
        along(|v| &mut v.bias)
    } else {
        Vec::new()
    };
    [along(|v| &mut v.x), along(|v| &mut v.weight), db]
}

fn conv_gradients_match_finite_differences<B: AutodiffBackend + QuantBackend>(
    device: &B::Device,
    dtype: DType,
) {
    let (eps, rtol, atol) = if dtype == DType::F64 {
        (1e-3, 1e-8, 1e-9)
    } else {
        (1e-1, 1e-3, 1e-3)
    };
    let mut rng = Lcg::new(29);
    for (k, geometry) in geometries().iter().enumerate() {
        let v = Values::new(geometry, &mut rng);
        let (_, got) = loss_and_grads::<B>(ours::<B>, geometry, &v, device, dtype);
        let fd = finite_differences::<B>(geometry, &v, device, dtype, eps);
        for (name, (g, f)) in ["dL/dx", "dL/dW", "dL/db"].iter().zip(got.iter().zip(&fd)) {
            assert_close(&format!("geometry {k} {name}"), g, f, rtol, atol);
        }
    }
}
on_each_backend!(conv_gradients_match_finite_differences);

/// In f32 on flex (the fast path's everyday dtype), the gradients equal Burn's own conv backward
/// to rounding, and the forward is Burn's.
#[test]
fn flex_conv_gradients_equal_burns_in_f32() {
    type B = burn::backend::Autodiff<crate::common::Flex>;
    let device = Default::default();
    let mut rng = Lcg::new(31);
    for (k, geometry) in geometries().iter().enumerate() {
        let v = Values::new(geometry, &mut rng);
        let (loss, got) = loss_and_grads::<B>(ours::<B>, geometry, &v, &device, DType::F32);
        let (loss_burn, want) = loss_and_grads::<B>(burns::<B>, geometry, &v, &device, DType::F32);
        assert_eq!(loss, loss_burn, "geometry {k}: forward");
        for (name, (g, w)) in ["dL/dx", "dL/dW", "dL/db"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close(&format!("geometry {k} {name}"), g, w, 1e-4, 1e-5);
        }
    }
}
