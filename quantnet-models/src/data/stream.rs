//! [`StreamLoader`]: Burn's `DataLoader` for images read from files, with bounded memory.
//!
//! Burn's multi-threaded loader queues up to 100 finished batches ahead of training
//! (`MAX_QUEUED_ITEMS`): with images decoded from files faster than a CPU trains on them, that
//! queue fills, and memory grows with the folder until it holds 100 batches (measured:
//! scripts/stream-memory.sh, docs/distributed.md). This loader decodes on its own worker threads
//! at most `depth` batches ahead of the batch training takes, and yields the batches in order, so
//! memory stays at `depth` batches whatever the folder's size and a run (and a resumed run) sees
//! the same batches whatever the threads' timing.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;

use super::{ImageBatch, ImageBatcher, ImageItem, Images};

/// Burn `DataLoader` over [`Images`] that decodes `depth` batches ahead on `workers` threads and
/// yields them in order: shuffled per epoch from `seed` (the epoch is the number of iterations
/// started), each image read with the epoch as its round ([`Images::read`]).
pub struct StreamLoader<B: Backend> {
    images: Images,
    batcher: ImageBatcher,
    batch_size: usize,
    shuffle: Option<u64>,
    range: Range<usize>,
    workers: usize,
    depth: usize,
    device: B::Device,
    /// The epoch of the first iteration (copies start there too).
    first_epoch: u64,
    epoch: AtomicU64,
    shard: Option<Shard>,
}

/// One rank's share of every epoch, for data parallelism over processes: the epoch's seeded
/// order ([`shard_order`]) cut into steps of `size × batch` images, of which this rank takes
/// the `rank`-th `batch`. Every rank has the same number of steps; the images after the last
/// whole step of `size × batch` are left out of the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, `0..size`.
    pub rank: usize,
    /// The number of ranks.
    pub size: usize,
    /// Images per step on this rank (the global batch over `size`).
    pub batch: usize,
}

impl Shard {
    /// Steps per epoch over `len` images: whole steps of `size × batch`.
    pub fn steps(&self, len: usize) -> usize {
        len / (self.size * self.batch).max(1)
    }

    /// This rank's share of an evaluation over `len` images: every `size`-th from `rank`
    /// (every image in exactly one share; the shares differ by at most one image).
    pub fn eval_share(&self, len: usize) -> Vec<usize> {
        (self.rank..len).step_by(self.size.max(1)).collect()
    }
}

/// The images rank `shard.rank` reads in an epoch whose order is seeded by `seed`: the
/// permutation [`shuffled_indices`](super::shuffled_indices)`(len, len, seed)` read in global
/// steps of `size × batch`, this rank's `batch` of each step in turn. The ranks' lists
/// interleaved step by step are the permutation's first `steps × size × batch` images, the
/// order one process with the global batch reads.
pub fn shard_order(len: usize, seed: u64, shard: Shard) -> Vec<usize> {
    let permutation = super::shuffled_indices(len, len, seed);
    let global = shard.size * shard.batch;
    (0..shard.steps(len))
        .flat_map(|k| {
            let from = k * global + shard.rank * shard.batch;
            permutation[from..from + shard.batch].to_vec()
        })
        .collect()
}

impl<B: Backend> StreamLoader<B> {
    /// Every image of `images` in batches of `batch_size`, shuffled from `shuffle` if given,
    /// decoded by `workers` threads at most `depth` batches ahead.
    pub fn new(
        images: Images,
        batcher: ImageBatcher,
        batch_size: usize,
        shuffle: Option<u64>,
        workers: usize,
        depth: usize,
    ) -> Self {
        Self {
            range: 0..images.len(),
            images,
            batcher,
            batch_size: batch_size.max(1),
            shuffle,
            workers: workers.max(1),
            depth: depth.max(1),
            device: Default::default(),
            first_epoch: 0,
            epoch: AtomicU64::new(0),
            shard: None,
        }
    }

    /// Rank `shard.rank`'s images of every epoch ([`shard_order`], epoch `e` seeded by
    /// `seed ^ e`, the order [`StreamLoader::new`] shuffles with), in batches of `batch_size`
    /// (`shard.batch`, or its share on one of several devices of the rank), from epoch
    /// `first_epoch` (a resumed run's).
    #[allow(clippy::too_many_arguments)]
    pub fn shard(
        images: Images,
        batcher: ImageBatcher,
        batch_size: usize,
        seed: u64,
        shard: Shard,
        first_epoch: u64,
        workers: usize,
        depth: usize,
    ) -> Self {
        let len = shard.steps(images.len()) * shard.batch;
        Self {
            range: 0..len,
            shard: Some(shard),
            first_epoch,
            epoch: AtomicU64::new(first_epoch),
            ..Self::new(images, batcher, batch_size, Some(seed), workers, depth)
        }
    }

    /// The same loader over `range` on `device`, at its first epoch.
    fn copy(&self, range: Range<usize>, device: B::Device) -> Self {
        Self {
            images: self.images.clone(),
            batcher: self.batcher,
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            range,
            workers: self.workers,
            depth: self.depth,
            device,
            first_epoch: self.first_epoch,
            epoch: AtomicU64::new(self.first_epoch),
            shard: self.shard,
        }
    }
}

/// What the workers and the iterator share.
struct Shared {
    /// The next batch a worker takes.
    next: AtomicUsize,
    /// Batches the iterator has yielded; a worker waits while its batch is `depth` ahead.
    consumed: Mutex<usize>,
    moved: Condvar,
    stop: AtomicBool,
}

type Decoded = (usize, std::result::Result<Vec<ImageItem>, String>);

impl<B: Backend> DataLoader<B, ImageBatch<B>> for StreamLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ImageBatch<B>> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        let order: Vec<usize> = match (self.shard, self.shuffle) {
            (Some(shard), Some(seed)) => {
                shard_order(self.images.len(), seed ^ epoch, shard)[self.range.clone()].to_vec()
            }
            (None, Some(seed)) => {
                let permutation =
                    super::shuffled_indices(self.range.len(), self.range.len(), seed ^ epoch);
                permutation
                    .into_iter()
                    .map(|i| self.range.start + i)
                    .collect()
            }
            _ => self.range.clone().collect(),
        };
        let batches: Arc<Vec<Vec<usize>>> = Arc::new(
            order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect(),
        );
        let shared = Arc::new(Shared {
            next: AtomicUsize::new(0),
            consumed: Mutex::new(0),
            moved: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (sender, receiver) = sync_channel::<Decoded>(self.depth);
        for _ in 0..self.workers.min(batches.len()) {
            let (images, batches, shared, sender) = (
                self.images.clone(),
                batches.clone(),
                shared.clone(),
                sender.clone(),
            );
            let depth = self.depth;
            std::thread::spawn(move || decode(&images, &batches, &shared, &sender, depth, epoch));
        }
        Box::new(StreamIter {
            receiver,
            pending: BTreeMap::new(),
            next: 0,
            batches: batches.len(),
            items: 0,
            total: order.len(),
            shared,
            batcher: self.batcher,
            device: self.device.clone(),
        })
    }

    fn num_items(&self) -> usize {
        self.range.len()
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        Arc::new(self.copy(self.range.clone(), device.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        let from = self.range.start;
        let range = (from + start).min(self.range.end)..(from + end).min(self.range.end);
        Arc::new(self.copy(range, self.device.clone()))
    }
}

/// A worker: takes the next batch, waits while it is `depth` ahead of training, decodes it and
/// sends it (or the first error, which names the file).
fn decode(
    images: &Images,
    batches: &[Vec<usize>],
    shared: &Shared,
    sender: &SyncSender<Decoded>,
    depth: usize,
    epoch: u64,
) {
    loop {
        let j = shared.next.fetch_add(1, Ordering::SeqCst);
        if j >= batches.len() {
            return;
        }
        {
            let Ok(mut consumed) = shared.consumed.lock() else {
                return;
            };
            while j >= *consumed + depth && !shared.stop.load(Ordering::SeqCst) {
                consumed = match shared.moved.wait(consumed) {
                    Ok(c) => c,
                    Err(_) => return,
                };
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        // A panic while decoding (a decoder bug) is sent as an error too: the other workers
        // would otherwise wait forever for this batch to be consumed.
        let items = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            batches[j]
                .iter()
                .map(|&i| images.read(i, epoch).map_err(|e| e.to_string()))
                .collect::<std::result::Result<Vec<_>, String>>()
        }))
        .unwrap_or_else(|_| Err(format!("decoding batch {j} panicked")));
        if sender.send((j, items)).is_err() {
            return;
        }
    }
}

struct StreamIter<B: Backend> {
    receiver: Receiver<Decoded>,
    pending: BTreeMap<usize, Vec<ImageItem>>,
    next: usize,
    batches: usize,
    items: usize,
    total: usize,
    shared: Arc<Shared>,
    batcher: ImageBatcher,
    device: B::Device,
}

impl<B: Backend> Iterator for StreamIter<B> {
    type Item = ImageBatch<B>;

    /// # Panics
    /// When an image file cannot be read (the message names it): the training loop has no
    /// other way to hear of it.
    fn next(&mut self) -> Option<ImageBatch<B>> {
        if self.next >= self.batches {
            return None;
        }
        let items = loop {
            if let Some(items) = self.pending.remove(&self.next) {
                break items;
            }
            match self.receiver.recv() {
                Ok((j, Ok(items))) => {
                    self.pending.insert(j, items);
                }
                Ok((_, Err(message))) => panic!("{message}"),
                Err(_) => panic!("the image loader's worker threads stopped"),
            }
        };
        self.next += 1;
        self.items += items.len();
        if let Ok(mut consumed) = self.shared.consumed.lock() {
            *consumed = self.next;
        }
        self.shared.moved.notify_all();
        Some(self.batcher.batch(items, &self.device))
    }
}

impl<B: Backend> DataLoaderIterator<ImageBatch<B>> for StreamIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.items, self.total)
    }
}

impl<B: Backend> Drop for StreamIter<B> {
    fn drop(&mut self) {
        // Workers waiting for room stop; one decoding finds the channel closed. The flag is set
        // under the lock the workers test it under, so none misses the wake-up.
        let guard = self.shared.consumed.lock();
        self.shared.stop.store(true, Ordering::SeqCst);
        drop(guard);
        self.shared.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    /// 10 byte images whose single pixel is their index.
    fn images() -> Images {
        let set = super::super::ImageSet {
            images: (0..10).collect(),
            labels: (0..10).collect(),
            channels: 1,
            rows: 1,
            cols: 1,
        };
        Images::bytes(set, (vec![0.0], vec![1.0 / 255.0]))
    }

    fn epoch(loader: &dyn DataLoader<B, ImageBatch<B>>) -> Vec<Vec<i64>> {
        loader
            .iter()
            .map(|b| b.targets.into_data().iter::<i64>().collect())
            .collect()
    }

    /// Two ranks' shards interleaved step by step are one process's order with the global
    /// batch; the images past the last whole step are left out; the loader reads its shard of
    /// each epoch, and a resumed one (first epoch 1) reads epoch 1's at its first iteration.
    #[test]
    fn shards_interleave_into_the_global_order() {
        let one = Shard {
            rank: 0,
            size: 1,
            batch: 4,
        };
        let whole = shard_order(10, 7, one);
        assert_eq!(whole, super::super::shuffled_indices(10, 10, 7)[..8]);
        let ranks: Vec<Vec<usize>> = (0..2)
            .map(|rank| {
                shard_order(
                    10,
                    7,
                    Shard {
                        rank,
                        size: 2,
                        batch: 2,
                    },
                )
            })
            .collect();
        assert_eq!(ranks[0].len(), 4);
        let interleaved: Vec<usize> = (0..2)
            .flat_map(|k| [&ranks[0][2 * k..2 * k + 2], &ranks[1][2 * k..2 * k + 2]].concat())
            .collect();
        assert_eq!(interleaved, whole);

        let batcher = ImageBatcher {
            channels: 1,
            rows: 1,
            cols: 1,
        };
        let shard = Shard {
            rank: 1,
            size: 2,
            batch: 2,
        };
        let loader = StreamLoader::<B>::shard(images(), batcher, 2, 7, shard, 0, 1, 2);
        assert_eq!(loader.num_items(), 4);
        let as_labels = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
        let epoch0 = epoch(&loader).concat();
        assert_eq!(epoch0, as_labels(&ranks[1]));
        let epoch1 = epoch(&loader).concat();
        assert_eq!(epoch1, as_labels(&shard_order(10, 7 ^ 1, shard)));
        assert_ne!(epoch0, epoch1);
        let resumed = StreamLoader::<B>::shard(images(), batcher, 2, 7, shard, 1, 1, 2);
        let copy = resumed.to_device(&Default::default());
        assert_eq!(epoch(copy.as_ref()).concat(), epoch1);
        // Two devices of the rank: each a contiguous half of the rank's images.
        let half = loader.slice(0, 2);
        assert_eq!(epoch(half.as_ref()).concat(), epoch0[..2]);
    }

    #[test]
    fn batches_come_in_order_shuffled_per_epoch_and_sliced() {
        let batcher = ImageBatcher {
            channels: 1,
            rows: 1,
            cols: 1,
        };
        let plain = StreamLoader::<B>::new(images(), batcher, 4, None, 3, 1);
        assert_eq!(
            epoch(&plain),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        let shuffled = StreamLoader::<B>::new(images(), batcher, 4, Some(5), 3, 2);
        let (first, second) = (epoch(&shuffled), epoch(&shuffled));
        assert_ne!(first, second, "a new order every epoch");
        for e in [&first, &second] {
            let mut all: Vec<i64> = e.concat();
            all.sort_unstable();
            assert_eq!(all, (0..10).collect::<Vec<_>>());
        }
        // Same seed, same epochs, whatever the number of threads and depth.
        let again = StreamLoader::<B>::new(images(), batcher, 4, Some(5), 1, 1);
        assert_eq!((epoch(&again), epoch(&again)), (first, second));
        // A slice shuffles within itself and restarts at epoch 0 (as Burn's loaders do).
        let part = shuffled.slice(2, 7);
        assert_eq!(part.num_items(), 5);
        let mut seen: Vec<i64> = epoch(part.as_ref()).concat();
        seen.sort_unstable();
        assert_eq!(seen, vec![2, 3, 4, 5, 6]);
        // An iterator dropped early stops its workers (no hang), and progress counts items.
        let mut it = plain.iter();
        let _ = it.next();
        assert_eq!(it.progress().items_processed, 4);
        drop(it);
    }
}
