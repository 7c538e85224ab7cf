//! What bounds ResNet-20's 1×1 stride-2 downsample convs (docs/inference.md): each output
//! value takes 16 multiply-adds and an exact float epilogue (scale, batch norm in f64), so the
//! epilogue alone, run as a pointwise layer over the same 64 × 16 × 16 × 32 values, is compared
//! with the whole layer and with a plain copy of its 2 MB of floats. Medians of 51 runs, one
//! thread, three rounds.
//!
//! ```sh
//! cargo run --release -p quantnet-infer --example epilogue_floor
//! ```

use std::time::Instant;

use quantnet_infer::Isa;
use quantnet_infer::layer::{Act, BatchNorm, Conv, Epilogue, Geometry, Input, Map, Weights};

/// The median time of `f` in milliseconds.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..51)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let isa = Isa::best();
    let (n, cin, cout, out_hw) = (64, 16, 32, 16);
    let bn = BatchNorm {
        gamma: vec![0.7; cout],
        beta: vec![0.1; cout],
        mean: vec![0.05; cout],
        var: vec![0.3; cout],
        epsilon: 1e-5,
    };
    let epi = Epilogue {
        bn: Some(bn),
        ..Epilogue::default()
    };
    let geo = Geometry {
        cin,
        cout,
        kh: 1,
        kw: 1,
        stride: 2,
        pad: 0,
    };
    let weights = Weights::Levels {
        levels: (0..cout * cin).map(|i| (i % 3) as i8 - 1).collect(),
        alpha: vec![0.1; cout],
    };
    let codes = Input::Codes {
        alpha: 0.3,
        max: 3,
        cs: cin,
    };
    let down = Conv::new(geo, &weights, &epi, codes, isa, true);
    let mut x = Map::<u8>::zeros(n, 2 * out_hw, 2 * out_hw, cin, cin);
    for (i, v) in x.data.iter_mut().enumerate() {
        *v = (i % 4) as u8;
    }
    let x = Act::Codes(x, 0.3);
    let pointwise = Conv::pointwise(cout, &epi, Input::Floats { cs: cout }, isa, true);
    let values = Act::Floats(Map::<f32>::zeros(n, out_hw, out_hw, cout, cout));
    let src = vec![1f32; n * out_hw * out_hw * cout];
    let mut dst = vec![0f32; src.len()];
    let macs = (n * out_hw * out_hw * cout * cin) as f64;
    println!("{} path, one thread", isa.name());
    for round in 1..=3 {
        let layer = median_ms(|| drop(std::hint::black_box(down.forward(&x, None))));
        let epilogue = median_ms(|| drop(std::hint::black_box(pointwise.forward(&values, None))));
        let copy = median_ms(|| dst.copy_from_slice(std::hint::black_box(&src)));
        println!(
            "round {round}: downsample {layer:.3} ms ({:.0} G MAC/s), its epilogue alone \
             {epilogue:.3} ms (at most {:.0} G MAC/s with free sums), a copy of its output \
             {copy:.3} ms",
            macs / layer / 1e6,
            macs / epilogue / 1e6
        );
    }
}
