//! Data parallelism over processes: a [`Collective`] (a group of ranks that sum buffers) and
//! [`AllReduced`], an optimizer wrapper that replaces every step's gradients by their mean over
//! the ranks before the wrapped optimizer steps.
//!
//! The gradients travel as **one flat `f32` buffer** per step: every float parameter of the
//! module, in the module's visiting order (each shared parameter once), gradient or zeros,
//! followed by one presence flag per parameter. One call per step whatever the model (ResNet-20
//! has about 60 parameter tensors; scalars such as α and β are slots like any other). The flags
//! check that the ranks agree on which parameters have a gradient: a rank that computed none for
//! a parameter another rank did is a programming error, reported instead of averaged.
//!
//! Every rank starts from the same model and applies the same mean gradient, so the models stay
//! equal (a [`Collective`] must give every rank the same bits: MPI's all-reduce does, as the
//! standard advises, and so does [`LocalGroup`]). The temperature hook, the learning-rate
//! schedule and [`GroupLr`](crate::train::GroupLr)'s quantizer group run on every rank as in one
//! process: wrap the optimizer that [`GroupLr`](crate::train::GroupLr) wraps, or `GroupLr`
//! itself (the mean is taken first either way).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

/// A group of processes (ranks) that sum buffers element by element: MPI's ranks
/// (`quantnet_models::dist::Mpi`), or threads of one process ([`LocalGroup`], for tests).
///
/// Every rank calls the same operations in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `buf` by the sum over the ranks of their `buf`; every rank gets the same bits.
    fn all_reduce_sum(&self, buf: &mut [f32]);
    /// Every rank's `value`, in rank order.
    fn all_gather(&self, value: u64) -> Vec<u64>;
}

impl std::fmt::Debug for dyn Collective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.rank(), self.size())
    }
}

/// What [`AllReduced`] sent: steps, bytes per step, seconds spent in the all-reduce.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AllReduceStats {
    /// Optimizer steps taken.
    pub steps: usize,
    /// The flat buffer's size in bytes (the last step's; the same at every step).
    pub bytes_per_step: usize,
    /// Seconds spent in [`Collective::all_reduce_sum`] over all steps (waiting for the slowest
    /// rank included).
    pub seconds: f64,
}

/// An optimizer that steps with the mean of the ranks' gradients: see the [module](self) docs.
pub struct AllReduced<O> {
    inner: O,
    group: Option<Arc<dyn Collective>>,
    stats: Arc<Mutex<AllReduceStats>>,
}

impl<O: Clone> Clone for AllReduced<O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            group: self.group.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<O> AllReduced<O> {
    /// `inner`, stepping with the mean gradient over `group`'s ranks.
    pub fn new(inner: O, group: Arc<dyn Collective>) -> Self {
        Self::over(inner, Some(group))
    }

    /// `inner` over `group` if there is one; without, `inner` as it is (one process).
    pub fn over(inner: O, group: Option<Arc<dyn Collective>>) -> Self {
        Self {
            inner,
            group,
            stats: Arc::default(),
        }
    }

    /// A handle on what was sent so far (shared with the optimizer's clones).
    pub fn stats(&self) -> Arc<Mutex<AllReduceStats>> {
        self.stats.clone()
    }
}

impl<M, B, O> Optimizer<M, B> for AllReduced<O>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
    O: Optimizer<M, B>,
{
    type Record = O::Record;

    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        let grads = match &self.group {
            Some(group) => mean_gradients::<B, M>(&module, grads, &**group, &self.stats),
            None => grads,
        };
        self.inner.step(lr, module, grads)
    }

    fn step_multi(&mut self, lr: f64, module: M, grads: MultiGradientsParams) -> M {
        // burn-train's sharded strategy (not used by quantnet) keeps gradients on several
        // devices; averaging them over ranks would need one buffer per device.
        assert!(
            self.group.is_none(),
            "AllReduced: burn-train's sharded multi-device strategy is not supported over ranks"
        );
        self.inner.step_multi(lr, module, grads)
    }

    fn to_record(&self) -> Self::Record {
        self.inner.to_record()
    }

    fn load_record(self, record: Self::Record) -> Self {
        Self {
            inner: self.inner.load_record(record),
            ..self
        }
    }
}

/// Where one parameter sits in the flat buffer.
struct Slot {
    offset: usize,
    len: usize,
    dims: Vec<usize>,
    dtype: DType,
    present: bool,
}

/// Walks the module's float parameters once each, in visiting order, writing their gradients
/// (or zeros) into the buffer.
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    seen: HashSet<ParamId>,
    order: Vec<ParamId>,
    slots: HashMap<ParamId, Slot>,
    buf: Vec<f32>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        if !self.seen.insert(id) {
            return;
        }
        let offset = self.buf.len();
        let (dims, dtype, present) = match self.grads.remove::<B::InnerBackend, D>(id) {
            Some(grad) => {
                let data = grad.into_data();
                let (dims, dtype) = (data.shape.to_vec(), data.dtype);
                let values = data
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("a float gradient reads as f32");
                self.buf.extend_from_slice(&values);
                (dims, dtype, true)
            }
            None => {
                let dims = param.shape().to_vec();
                let len: usize = dims.iter().product();
                self.buf.resize(offset + len, 0.0);
                (dims, DType::F32, false)
            }
        };
        let len = self.buf.len() - offset;
        self.order.push(id);
        self.slots.insert(
            id,
            Slot {
                offset,
                len,
                dims,
                dtype,
                present,
            },
        );
    }
}

/// Puts the averaged gradients back, with each parameter's rank `D` (known only while visiting);
/// a slot is taken at its parameter's first visit, so a shared parameter is registered once.
struct Unflatten<'a, B> {
    buf: &'a [f32],
    slots: HashMap<ParamId, Slot>,
    scale: f32,
    grads: GradientsParams,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let id = param.id;
        let Some(slot) = self.slots.remove(&id).filter(|slot| slot.present) else {
            return;
        };
        let values: Vec<f32> = self.buf[slot.offset..slot.offset + slot.len]
            .iter()
            .map(|v| v * self.scale)
            .collect();
        // Gradients live where their parameter does.
        let device = param.val().inner().device();
        let data = TensorData::new(values, slot.dims).convert_dtype(slot.dtype);
        self.grads.register::<B::InnerBackend, D>(
            id,
            Tensor::<B::InnerBackend, D>::from_data(data, &device),
        );
    }
}

/// `grads` replaced by their mean over `group`'s ranks (see the [module](self) docs), on the
/// device the gradients were on.
///
/// # Panics
/// When the ranks disagree on which parameters have a gradient.
pub fn mean_gradients<B, M>(
    module: &M,
    mut grads: GradientsParams,
    group: &dyn Collective,
    stats: &Mutex<AllReduceStats>,
) -> GradientsParams
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut flat = Flatten::<B> {
        grads: &mut grads,
        seen: HashSet::new(),
        order: Vec::new(),
        slots: HashMap::new(),
        buf: Vec::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut flat);
    let Flatten {
        order,
        mut slots,
        mut buf,
        ..
    } = flat;
    let values = buf.len();
    buf.extend(
        order
            .iter()
            .map(|id| if slots[id].present { 1.0 } else { 0.0 }),
    );
    let reduce = Instant::now();
    group.all_reduce_sum(&mut buf);
    let seconds = reduce.elapsed().as_secs_f64();
    let n = group.size();
    for (id, flag) in order.iter().zip(&buf[values..]) {
        let count = flag.round() as usize;
        assert!(
            count == 0 || count == n,
            "ranks disagree on which parameters have a gradient: {count} of {n} ranks have one \
             for parameter {id}"
        );
        if let Some(slot) = slots.get_mut(id) {
            slot.present = count == n;
        }
    }
    let mut back = Unflatten::<B> {
        buf: &buf[..values],
        slots,
        scale: 1.0 / n as f32,
        grads: GradientsParams::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut back);
    if let Ok(mut stats) = stats.lock() {
        stats.steps += 1;
        stats.bytes_per_step = buf.len() * std::mem::size_of::<f32>();
        stats.seconds += seconds;
    }
    back.grads
}

/// Whether the field being visited is a batch norm's running statistic: Burn's derive enters
/// each field as `(field name, "Struct:" + the parent's type)`.
#[derive(Default)]
struct FieldStack(Vec<bool>);

impl FieldStack {
    fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push(
            container_type == "Struct:BatchNorm" && matches!(name, "running_mean" | "running_var"),
        );
    }

    fn exit(&mut self) {
        self.0.pop();
    }

    fn in_running_stat(&self) -> bool {
        self.0.last().copied().unwrap_or(false)
    }
}

/// Collects the batch norms' running statistics, in visiting order.
struct RunningStats {
    fields: FieldStack,
    slots: HashMap<ParamId, (usize, usize)>,
    values: Vec<f32>,
}

impl<B: Backend> ModuleVisitor<B> for RunningStats {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.fields.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.fields.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.fields.in_running_stat() || self.slots.contains_key(&param.id) {
            return;
        }
        let values = param
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("a float tensor reads as f32");
        self.slots
            .insert(param.id, (self.values.len(), values.len()));
        self.values.extend(values);
    }
}

/// Puts the averaged running statistics back: the parameters [`RunningStats`] collected, found
/// by id.
struct SetRunningStats<'a> {
    slots: &'a HashMap<ParamId, (usize, usize)>,
    values: &'a [f32],
}

impl<B: Backend> ModuleMapper<B> for SetRunningStats<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some(&(offset, len)) = self.slots.get(&param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let (shape, dtype, device) = (tensor.shape(), tensor.dtype(), tensor.device());
        let data =
            TensorData::new(self.values[offset..offset + len].to_vec(), shape).convert_dtype(dtype);
        Param::from_mapped_value(id, Tensor::from_data(data, &device), mapper)
    }
}

/// `module` with every batch norm's running mean and variance replaced by their mean over
/// `group`'s ranks (one all-reduce), everything else untouched: the statistics that data
/// parallelism leaves per rank, made one before calibration or a final evaluation. (The mean of
/// the ranks' running variances, not the variance of the union: the same up to the spread of
/// the ranks' running means.)
pub fn average_batch_norm<B: Backend, M: Module<B>>(module: M, group: &dyn Collective) -> M {
    let mut stats = RunningStats {
        fields: FieldStack::default(),
        slots: HashMap::new(),
        values: Vec::new(),
    };
    module.visit(&mut stats);
    if stats.values.is_empty() {
        return module;
    }
    group.all_reduce_sum(&mut stats.values);
    let n = group.size() as f32;
    for v in &mut stats.values {
        *v /= n;
    }
    module.map(&mut SetRunningStats {
        slots: &stats.slots,
        values: &stats.values,
    })
}

/// The ranks as threads of one process: each thread holds one `LocalGroup` of the same
/// [`LocalGroup::new`] set. Sums in rank order, so every rank gets the same bits. For tests and
/// for trying the multi-process code path without MPI.
#[derive(Clone)]
pub struct LocalGroup {
    rank: usize,
    shared: Arc<LocalShared>,
}

struct LocalShared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f32>>>,
    values: Mutex<Vec<u64>>,
}

impl LocalGroup {
    /// `size` ranks, one per thread that will use it (in rank order).
    pub fn new(size: usize) -> Vec<Self> {
        let shared = Arc::new(LocalShared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
            values: Mutex::new(vec![0; size]),
        });
        (0..size)
            .map(|rank| Self {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, buf: &mut [f32]) {
        let s = &self.shared;
        s.slots.lock().expect("a rank panicked")[self.rank] = buf.to_vec();
        s.barrier.wait();
        {
            let slots = s.slots.lock().expect("a rank panicked");
            for (i, v) in buf.iter_mut().enumerate() {
                *v = slots.iter().map(|b| b[i]).fold(0.0, |a, b| a + b);
            }
        }
        s.barrier.wait();
    }

    fn all_gather(&self, value: u64) -> Vec<u64> {
        let s = &self.shared;
        s.values.lock().expect("a rank panicked")[self.rank] = value;
        s.barrier.wait();
        let all = s.values.lock().expect("a rank panicked").clone();
        s.barrier.wait();
        all
    }
}

#[cfg(test)]
#[cfg(feature = "flex")]
mod tests {
    use super::*;
    use crate::testing::TestAutodiffBackend as AB;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};

    /// A linear layer with a scalar gain (a parameter of rank 1 and one element, like α) and a
    /// parameter that gets no gradient.
    #[derive(Module, Debug)]
    struct Net<B: burn::tensor::backend::Backend> {
        linear: Linear<B>,
        gain: Param<Tensor<B, 1>>,
        unused: Param<Tensor<B, 2>>,
    }

    /// `f` on as many ranks as `inputs`, each rank a thread with its own [`LocalGroup`] and
    /// input; the results in rank order.
    fn on_ranks<I: Send, T: Send>(inputs: Vec<I>, f: impl Fn(LocalGroup, I) -> T + Sync) -> Vec<T> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = LocalGroup::new(inputs.len())
                .into_iter()
                .zip(inputs)
                .map(|(group, input)| s.spawn(move || f(group, input)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// `n` copies of `net` with the same values and parameter ids but autodiff leaves of their
    /// own. Clones would share their leaves, and Burn 0.21's autodiff merges the graphs of two
    /// threads that share a leaf: its graph locks are taken in opposite orders by a merge and by
    /// a concurrent backward pass (`runtime/graph.rs`), which deadlocked these tests, rarely,
    /// in CI.
    fn copies(net: &Net<AB>, n: usize) -> Vec<Net<AB>> {
        use burn::module::AutodiffModule;
        (0..n).map(|_| Net::from_inner(net.valid())).collect()
    }

    fn net() -> Net<AB> {
        let device = Default::default();
        let net = Net {
            linear: LinearConfig::new(3, 2).init(&device),
            gain: Param::from_tensor(Tensor::from_floats([1.5], &device)),
            unused: Param::from_tensor(Tensor::ones([2, 2], &device)),
        };
        // Burn initialises parameters lazily, and each clone of an uninitialised one draws
        // its own values: initialise before the ranks take their copies.
        values(&net);
        net
    }

    /// Rows 0..8 of a fixed input, and the mean squared output of `net` on rows `rows`.
    fn loss(net: &Net<AB>, rows: std::ops::Range<usize>) -> Tensor<AB, 1> {
        let device = net.gain.device();
        let x: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
        let x = Tensor::<AB, 1>::from_floats(x.as_slice(), &device).reshape([8, 3]);
        let x = x.slice([rows, 0..3]);
        let y = net.linear.forward(x) * net.gain.val().unsqueeze::<2>();
        (y.clone() * y).mean()
    }

    fn values(net: &Net<AB>) -> Vec<f32> {
        let mut all = net.linear.weight.val().into_data().to_vec::<f32>().unwrap();
        all.extend(
            net.linear
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        all.extend(net.gain.val().into_data().to_vec::<f32>().unwrap());
        all.extend(net.unused.val().into_data().to_vec::<f32>().unwrap());
        all
    }

    /// One step on rows `rows` through `optimizer`.
    fn step<O: Optimizer<Net<AB>, AB>>(
        optimizer: &mut O,
        net: Net<AB>,
        rows: std::ops::Range<usize>,
    ) -> Net<AB> {
        let grads = GradientsParams::from_grads(loss(&net, rows).backward(), &net);
        optimizer.step(0.1, net, grads)
    }

    /// Two ranks, each with half of the batch, step exactly as one process with the whole
    /// batch up to float summation order: the mean of two half-batch means is the whole-batch
    /// mean. Both ranks end with the same bits, Adam's state included (two steps), and the
    /// parameter without a gradient stays put.
    #[test]
    fn two_ranks_with_half_batches_step_as_one_process_with_the_whole_batch() {
        let start = net();
        let mut whole = AdamConfig::new().init();
        let mut one = start.clone();
        for _ in 0..2 {
            one = step(&mut whole, one, 0..8);
        }
        let ranks = on_ranks(copies(&start, 2), |group, mut net| {
            let rows = group.rank() * 4..group.rank() * 4 + 4;
            let mut optimizer = AllReduced::new(AdamConfig::new().init(), Arc::new(group));
            let stats = optimizer.stats();
            for _ in 0..2 {
                net = step(&mut optimizer, net, rows.clone());
            }
            let stats = *stats.lock().unwrap();
            assert_eq!(stats.steps, 2);
            // 6 + 2 + 1 + 4 values, then 4 presence flags.
            assert_eq!(stats.bytes_per_step, (13 + 4) * 4);
            values(&net)
        });
        assert_eq!(ranks[0], ranks[1], "the ranks' models differ");
        let one = values(&one);
        assert_ne!(one, values(&start));
        for (i, (a, b)) in ranks[0].iter().zip(&one).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "value {i}: 2 ranks {a}, 1 process {b}"
            );
        }
        assert_eq!(
            ranks[0][9..],
            values(&start)[9..],
            "the unused parameter moved"
        );
    }

    /// A scalar gradient through the flat buffer is its mean: SGD at lr 0.1 moves the gain by
    /// −0.1 · (g₀ + g₁)/2, where gᵣ is rank r's gradient computed alone.
    #[test]
    fn the_buffer_carries_the_mean_of_the_ranks_gradients() {
        let start = net();
        let grad = |rows| {
            let g = GradientsParams::from_grads(loss(&start, rows).backward(), &start);
            g.get::<burn::backend::Flex, 1>(start.gain.id)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()[0]
        };
        let mean = (grad(0..4) + grad(4..8)) / 2.0;
        let gains = on_ranks(copies(&start, 2), |group, start| {
            let rows = group.rank() * 4..group.rank() * 4 + 4;
            let mut optimizer = AllReduced::new(SgdConfig::new().init(), Arc::new(group));
            let net = step(&mut optimizer, start, rows);
            net.gain.val().into_data().to_vec::<f32>().unwrap()[0]
        });
        assert_eq!(gains[0], gains[1]);
        assert!(
            (gains[0] - (1.5 - 0.1 * mean)).abs() < 1e-6,
            "{gains:?} vs mean {mean}"
        );
    }

    /// A rank whose step computed a gradient the other's did not is refused, not averaged.
    #[test]
    fn ranks_that_disagree_on_the_gradients_present_are_refused() {
        let start = net();
        let outcomes = on_ranks(copies(&start, 2), |group, start| {
            let mut grads = GradientsParams::from_grads(loss(&start, 0..8).backward(), &start);
            if group.rank() == 1 {
                let _ = grads.remove::<burn::backend::Flex, 1>(start.gain.id);
            }
            let stats = Mutex::default();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                mean_gradients::<AB, _>(&start, grads, &group, &stats)
            }))
            .is_err()
        });
        assert_eq!(outcomes, [true, true]);
    }

    #[derive(Module, Debug)]
    struct Normed<B: burn::tensor::backend::Backend> {
        norm: burn::nn::BatchNorm<B>,
        gain: Param<Tensor<B, 1>>,
    }

    fn floats<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Each rank's running mean and variance become the ranks' mean; the learned γ, β and any
    /// other parameter (here a gain that differs per rank) stay as they were.
    #[test]
    fn batch_norm_running_statistics_are_averaged_and_nothing_else() {
        use burn::module::RunningState;
        type B = burn::backend::Flex;
        let out = on_ranks(vec![(); 2], |group, ()| {
            let device = Default::default();
            let r = group.rank() as f32;
            let mut norm = burn::nn::BatchNormConfig::new(2).init::<B>(&device);
            norm.running_mean = RunningState::new(Tensor::from_floats([r, 1.0 + 2.0 * r], &device));
            norm.running_var = RunningState::new(Tensor::from_floats([1.0 + r, 4.0], &device));
            let model = Normed {
                norm,
                gain: Param::from_tensor(Tensor::from_floats([10.0 + r], &device)),
            };
            let model = average_batch_norm(model, &group);
            [
                floats(model.norm.running_mean.value()),
                floats(model.norm.running_var.value()),
                floats(model.norm.gamma.val()),
                floats(model.gain.val()),
            ]
        });
        for (rank, [mean, var, gamma, gain]) in out.iter().enumerate() {
            assert_eq!(mean, &[0.5, 2.0]);
            assert_eq!(var, &[1.5, 4.0]);
            assert_eq!(gamma, &[1.0, 1.0]);
            assert_eq!(gain, &[10.0 + rank as f32]);
        }
    }

    #[test]
    fn local_group_gathers_in_rank_order() {
        let gathered = on_ranks(vec![(); 3], |g, ()| g.all_gather(10 + g.rank() as u64));
        assert_eq!(gathered, vec![vec![10, 11, 12]; 3]);
    }
}
