//! Quantized layers on every instruction-set path against a naive code-domain reference: direct
//! loops over `[cout][cin][kh][kw]` levels and NHWC codes, the exact integer sum, then the
//! canonical epilogue (`fl(z·fl(α_w·α_a))`, bias, batch norm in f64, residual, ReLU, the hard
//! quantizer). Tolerance 0, on random shapes (strides, padding, odd channel counts), for weights
//! {1, 2, 3pm2, 3pm4} × activations u1–u4.

use quantnet_infer::Isa;
use quantnet_infer::layer::{
    Act, ActQuant, BatchNorm, Conv, Epilogue, Geometry, Input, Map, Weights,
};

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

const WEIGHT_SETS: [&[i8]; 4] = [
    &[-1, 1],
    &[-1, 0, 1],
    &[-2, -1, 0, 1, 2],
    &[-4, -2, -1, 0, 1, 2, 4],
];

/// The canonical epilogue of one output, written out longhand.
fn reference_value(e: &Epilogue, scale: f32, c: usize, z: i64, residual: f32) -> (f32, Option<u8>) {
    let mut v = z as f32 * scale;
    if let Some(b) = &e.bias {
        v += b[c];
    }
    if let Some(bn) = &e.bn {
        let k = f64::from(bn.gamma[c]) / (f64::from(bn.var[c]) + bn.epsilon).sqrt();
        v = ((f64::from(v) - f64::from(bn.mean[c])) * k + f64::from(bn.beta[c])) as f32;
    }
    if e.residual {
        v += residual;
    }
    if e.relu && v <= 0.0 {
        v = 0.0;
    }
    match &e.quant {
        None => (v, None),
        Some(q) => {
            let bv = q.beta * v;
            let mut y = 0f32;
            for (i, b) in q.thresholds.iter().enumerate() {
                if bv >= *b {
                    y += q.levels[i + 1] - q.levels[i];
                }
            }
            y -= -q.levels[0];
            (q.alpha * y, Some(y as u8))
        }
    }
}

#[test]
fn quantized_layers_match_the_code_domain_reference_on_every_path() {
    let mut rng = Rng(2026);
    let mut checked = 0;
    for case in 0..96 {
        let wset = WEIGHT_SETS[case % 4];
        let abits = 1 + (case / 4) % 4;
        let amax = (1u32 << abits) - 1;
        let k = [1, 3, 5][rng.below(3)];
        // Every third layer is a stride-1 conv with rows of 8 or 16 outputs and pixels of a
        // power-of-two size: the kernels read such inputs in place instead of packing them.
        let in_place = case % 3 == 1;
        let mut geo = Geometry {
            cin: 1 + rng.below(21),
            cout: 1 + rng.below(80),
            kh: k,
            kw: k,
            stride: 1 + rng.below(2),
            pad: rng.below(k / 2 + 1),
        };
        let (n, h, mut w) = (1 + rng.below(3), k + rng.below(7), k + rng.below(7));
        let mut cs = geo.cin.div_ceil(4) * 4 + 4 * rng.below(2);
        if in_place {
            geo.stride = 1;
            w = [8, 16][rng.below(2)] + k - 1 - 2 * geo.pad;
            cs = geo.cin.next_power_of_two().max(4);
        }
        let per = geo.cin * k * k;
        let levels: Vec<i8> = (0..geo.cout * per)
            .map(|_| wset[rng.below(wset.len())])
            .collect();
        let alpha_w: Vec<f32> = (0..geo.cout).map(|_| 0.01 + rng.unit()).collect();
        let alpha_in = 0.05 + rng.unit();
        let mut codes = Map::<u8>::zeros(n, h, w, geo.cin, cs);
        for p in 0..n * h * w {
            for c in 0..geo.cin {
                codes.data[p * cs + c] = rng.below(amax as usize + 1) as u8;
            }
        }
        let residual = case % 3 == 2;
        // The shortcut: floats (a downsample's output), or every other time codes with their
        // α (a block's input, codes up to `smax`), added as fl(α·y). Half the coded ones tell
        // the layer, which then thresholds per shortcut code (4 sets or fewer on AVX-512's
        // lane selection, 8 on the portable body).
        let alpha_r = 0.1 + rng.unit();
        let coded = case % 2 == 1;
        let smax = [1u8, 3, 7][(case / 6) % 3];
        let told = coded && case % 4 != 3;
        let out_levels: Vec<f32> = (0..=amax).map(|y| y as f32).collect();
        let quant = (case % 5 != 4).then(|| ActQuant {
            alpha: 0.1 + rng.unit(),
            beta: 0.2 + rng.unit(),
            thresholds: (0..amax)
                .map(|i| (i as f32 + 0.3 + 0.4 * rng.unit()) * 2.0)
                .collect(),
            levels: out_levels.clone(),
        });
        let epi = Epilogue {
            bias: (case % 2 == 0).then(|| (0..geo.cout).map(|_| rng.unit() - 0.5).collect()),
            bn: (case % 3 != 0).then(|| BatchNorm {
                // Some negative γ: channels whose epilogue decreases with the sum.
                gamma: (0..geo.cout).map(|_| 2.0 * rng.unit() - 0.6).collect(),
                beta: (0..geo.cout).map(|_| rng.unit()).collect(),
                mean: (0..geo.cout).map(|_| rng.unit() - 0.5).collect(),
                var: (0..geo.cout).map(|_| 0.5 + rng.unit()).collect(),
                epsilon: 1e-5,
            }),
            residual,
            coded_residual: (residual && told).then_some((alpha_r, smax)),
            relu: case % 7 != 6,
            quant,
        };
        let oh = (h + 2 * geo.pad - k) / geo.stride + 1;
        let ow = (w + 2 * geo.pad - k) / geo.stride + 1;
        let stride_out = geo.cout.div_ceil(16) * 16;
        let mut shortcut = Map::<f32>::zeros(n, oh, ow, geo.cout, stride_out);
        let mut shortcut_codes = Map::<u8>::zeros(n, oh, ow, geo.cout, stride_out);
        for (v, y) in shortcut.data.iter_mut().zip(&mut shortcut_codes.data) {
            *y = rng.below(usize::from(smax) + 1) as u8;
            *v = if coded {
                alpha_r * f32::from(*y)
            } else {
                2.0 * rng.unit() - 1.0
            };
        }
        let shortcut = if coded {
            Act::Codes(shortcut_codes, alpha_r)
        } else {
            Act::Floats(shortcut)
        };
        let shortcut_value = |i: usize| match &shortcut {
            Act::Floats(m) => m.data[i],
            Act::Codes(m, a) => a * f32::from(m.data[i]),
        };
        // The reference.
        let mut want_vals = vec![0f32; n * oh * ow * geo.cout];
        let mut want_codes = vec![0u8; n * oh * ow * geo.cout];
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..geo.cout {
                        let mut z = 0i64;
                        for ci in 0..geo.cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (y, x) = (oy * geo.stride + ky, ox * geo.stride + kx);
                                    let (Some(y), Some(x)) =
                                        (y.checked_sub(geo.pad), x.checked_sub(geo.pad))
                                    else {
                                        continue;
                                    };
                                    if y >= h || x >= w {
                                        continue;
                                    }
                                    let a = codes.data[((img * h + y) * w + x) * cs + ci];
                                    let l = levels[((co * geo.cin + ci) * k + ky) * k + kx];
                                    z += i64::from(a) * i64::from(l);
                                }
                            }
                        }
                        let q = ((img * oh + oy) * ow + ox) * geo.cout + co;
                        let r = shortcut_value(((img * oh + oy) * ow + ox) * stride_out + co);
                        let (v, code) = reference_value(&epi, alpha_w[co] * alpha_in, co, z, r);
                        want_vals[q] = v;
                        want_codes[q] = code.unwrap_or(0);
                    }
                }
            }
        }
        let weights = Weights::Levels {
            levels: levels.clone(),
            alpha: alpha_w.clone(),
        };
        let input = Input::Codes {
            alpha: alpha_in,
            max: amax as u8,
            cs,
        };
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let conv = Conv::new(geo, &weights, &epi, input, isa, true);
            assert!(conv.is_int(), "case {case}: not on integers");
            let got = conv.forward(
                &Act::Codes(codes.clone(), alpha_in),
                residual.then_some(&shortcut),
            );
            let what = format!("case {case} {isa} {geo:?} W{wset:?} A{abits}");
            let pick = |q: usize| (q / geo.cout) * stride_out + q % geo.cout;
            match got {
                Act::Codes(m, _) => {
                    assert!(epi.quant.is_some(), "{what}");
                    for (q, want) in want_codes.iter().enumerate() {
                        assert_eq!(m.data[pick(q)], *want, "{what}: output {q}");
                    }
                }
                Act::Floats(m) => {
                    assert!(epi.quant.is_none(), "{what}");
                    for (q, want) in want_vals.iter().enumerate() {
                        assert_eq!(
                            m.data[pick(q)].to_bits(),
                            want.to_bits(),
                            "{what}: output {q}"
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 96);
}

/// The engine refuses an instruction set this CPU does not run, or one it does not know, with
/// one line naming it.
#[test]
fn unknown_or_missing_instruction_sets_are_refused() {
    let e = "neon".parse::<Isa>().unwrap_err().to_string();
    assert!(e.contains("neon") && e.contains("scalar"), "{e}");
    assert_eq!("scalar".parse::<Isa>().unwrap(), Isa::Scalar);
    for isa in Isa::ALL {
        assert_eq!(isa.name().parse::<Isa>().is_ok(), isa.available());
    }
}
