//! The placement index: the devices that can take work, ordered the way
//! placement asks for them, so that choosing a device costs what the
//! fleet's distinct device classes cost, not what its devices do.
//!
//! Placement wants, for a task, the device with the greatest
//! `(not on the node that lost it, not the device that failed it,
//! preference score, fewest attempts queued, least-loaded node, least
//! recently used)`, ties going to the first node by name and the first
//! device of that node ([`Scheduler::best_on`] over every node, the brute
//! force this index must agree with). Devices with the same capabilities
//! form a *class*: a session's requirement and preference score are the
//! same for every device of a class. Within a class and an in-flight level
//! (0 to [`PREFETCH`]), the index keeps the nodes that can take work by
//! `(load, last use of their best device there, name)`, and each node its
//! devices there by `(last use, index)`: the best device of a class is the
//! first entry of its first non-empty level.
//!
//! Every change of a device's or a node's state calls [`PlacementIndex::device`]
//! or [`PlacementIndex::node`]; a registration, [`PlacementIndex::set_node`];
//! a node leaving, [`PlacementIndex::remove_node`]. In unit tests every
//! placement is checked against the brute force.

use super::placement::score;
use super::*;

const LEVELS: usize = PREFETCH as usize + 1;

/// A node's entry in a level: its load, the last use of its best device
/// there, its name.
type NodeEntry = (u64, u64, Arc<str>);

#[derive(Debug, Default)]
pub(super) struct PlacementIndex {
    /// The distinct capabilities of devices, and how many devices have each.
    classes: Vec<(Capabilities, usize)>,
    class_ids: HashMap<String, usize>,
    /// Per class and in-flight level: the nodes that take work and have a
    /// device of that class at that level.
    levels: Vec<[BTreeSet<NodeEntry>; LEVELS]>,
    nodes: HashMap<Arc<str>, Indexed>,
    /// Nodes accepting and below their cap (what `place` loops while there is).
    open: usize,
}

#[derive(Debug, Default)]
struct Indexed {
    load: u64,
    /// Takes new work: accepting, not drained, not waiting to resume, below its cap.
    takes_work: bool,
    /// Accepting and below its cap.
    open: bool,
    /// Each device's class and, when it can take work, its (level, last use).
    devices: Vec<(usize, Option<(usize, u64)>)>,
    /// Per (class, level) where a device of the node has been: the devices
    /// there now, and the node's entry in `levels` for it. A set that
    /// empties stays (with no entry), so a device moving between levels at
    /// every assignment and result allocates nothing.
    sets: BTreeMap<(usize, usize), Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The devices, by (last use, index).
    devices: BTreeSet<(u64, usize)>,
    /// The node's entry in `levels` for this (class, level): present while
    /// `devices` is not empty and the node takes work.
    entry: Option<NodeEntry>,
}

/// A device found: its placement key (lower is better) and where it is.
type Found = ((usize, u64, u64, Arc<str>, usize), Arc<str>, usize);

fn load_of(n: &Node) -> u64 {
    u64::from(n.inflight) * 1000 / u64::from(n.cap().max(1))
}

fn slot_of(d: &Device) -> Option<(usize, u64)> {
    (d.usable() && d.inflight <= PREFETCH).then_some((d.inflight as usize, d.last_used))
}

/// Whether a session must not use a node (`None`) or one of its devices.
pub(super) type Skip<'a> = &'a dyn Fn(&str, Option<usize>) -> bool;

impl PlacementIndex {
    fn class_of(&mut self, caps: &Capabilities) -> usize {
        let key = format!("{caps:?}");
        if let Some(&c) = self.class_ids.get(&key) {
            return c;
        }
        let c = self.classes.len();
        self.classes.push((caps.clone(), 0));
        self.levels.push(Default::default());
        self.class_ids.insert(key, c);
        c
    }

    /// Whether some nodes are accepting and below their cap.
    pub(super) fn any_open(&self) -> bool {
        self.open > 0
    }

    /// Whether some registered device has capabilities that satisfy `require`.
    pub(super) fn any_matches(&self, require: &Capabilities) -> bool {
        self.classes
            .iter()
            .any(|(caps, n)| *n > 0 && caps_match(require, caps))
    }

    /// Index `node` (registered or registered again) from scratch.
    pub(super) fn set_node(&mut self, node: &Node) {
        self.remove_node(&node.name);
        let devices = node
            .devices
            .iter()
            .map(|d| {
                let c = self.class_of(&d.caps);
                self.classes[c].1 += 1;
                (c, None)
            })
            .collect();
        self.nodes.insert(
            node.name.clone(),
            Indexed {
                devices,
                ..Indexed::default()
            },
        );
        for d in 0..node.devices.len() {
            self.place_device(node, d);
        }
        self.node(node);
    }

    /// `name` left: none of its devices takes work any more.
    pub(super) fn remove_node(&mut self, name: &str) {
        let Some(ix) = self.nodes.remove(name) else {
            return;
        };
        for ((c, l), slot) in ix.sets {
            if let Some(entry) = slot.entry {
                self.levels[c][l].remove(&entry);
            }
        }
        for (c, _) in ix.devices {
            self.classes[c].1 -= 1;
        }
        if ix.open {
            self.open -= 1;
        }
    }

    /// Device `d` of `node` changed (attempts queued, last use, disabled):
    /// move it, then refresh the node (its load may have changed too).
    pub(super) fn device(&mut self, node: &Node, d: usize) {
        self.place_device(node, d);
        self.node(node);
    }

    fn place_device(&mut self, node: &Node, d: usize) {
        let Some(ix) = self.nodes.get_mut(&node.name) else {
            return;
        };
        let (class, old) = ix.devices[d];
        let new = slot_of(&node.devices[d]);
        if old == new {
            return;
        }
        if let Some((level, used)) = old {
            if let Some(slot) = ix.sets.get_mut(&(class, level)) {
                slot.devices.remove(&(used, d));
                if slot.devices.is_empty() {
                    if let Some(entry) = slot.entry.take() {
                        self.levels[class][level].remove(&entry);
                    }
                }
            }
        }
        if let Some((level, used)) = new {
            ix.sets
                .entry((class, level))
                .or_default()
                .devices
                .insert((used, d));
        }
        ix.devices[d].1 = new;
    }

    /// `node`'s own state changed (load, accepting, drained, resuming):
    /// bring its entries in the levels up to date.
    pub(super) fn node(&mut self, node: &Node) {
        let Some(ix) = self.nodes.get_mut(&node.name) else {
            return;
        };
        let open = node.accepting && node.inflight < node.cap();
        if open != ix.open {
            if open {
                self.open += 1;
            } else {
                self.open -= 1;
            }
            ix.open = open;
        }
        ix.load = load_of(node);
        ix.takes_work = open && !node.drained && node.resume_by.is_none();
        // Every non-empty set has an entry while the node takes work, none
        // otherwise (an emptied set lost its entry in `place_device`).
        for (&(c, l), slot) in &mut ix.sets {
            let wanted = match slot.devices.first() {
                Some(&(used, _)) if ix.takes_work => Some((ix.load, used)),
                _ => None,
            };
            // (The name in an entry is always this node's.)
            if slot.entry.as_ref().map(|e| (e.0, e.1)) == wanted {
                continue;
            }
            if let Some(old) = slot.entry.take() {
                self.levels[c][l].remove(&old);
            }
            if let Some((load, used)) = wanted {
                let entry = (load, used, node.name.clone());
                self.levels[c][l].insert(entry.clone());
                slot.entry = Some(entry);
            }
        }
    }

    /// The best device for a task with `require` and `prefer`, on no node
    /// named `lost` and not device `avoid` (node, index); `None`: every
    /// device that could take it is on `lost` or is `avoid` (or there is none).
    pub(super) fn best(
        &self,
        require: &Capabilities,
        prefer: &BTreeMap<String, i64>,
        lost: Option<&str>,
        avoid: Option<(&str, usize)>,
        depth: u32,
        skip: Skip<'_>,
    ) -> Option<(Arc<str>, usize)> {
        let mut classes: Vec<(i64, usize)> = self
            .classes
            .iter()
            .enumerate()
            .filter(|(_, (caps, n))| *n > 0 && caps_match(require, caps))
            .map(|(c, (caps, _))| (score(prefer, caps), c))
            .collect();
        // Highest score first; the classes of one score compete on the rest.
        classes.sort_by_key(|&(score, _)| std::cmp::Reverse(score));
        let mut i = 0;
        while i < classes.len() {
            let score = classes[i].0;
            let mut best: Option<Found> = None;
            while i < classes.len() && classes[i].0 == score {
                let c = classes[i].1;
                for level in 0..LEVELS.min(depth as usize + 1) {
                    if let Some(f) = self.best_in(c, level, lost, avoid, skip) {
                        if best.as_ref().is_none_or(|b| f.0 < b.0) {
                            best = Some(f);
                        }
                        break;
                    }
                }
                i += 1;
            }
            if let Some((_, node, d)) = best {
                return Some((node, d));
            }
        }
        None
    }

    /// The best device of class `c` at `level`, skipping node `lost` and
    /// device `avoid`.
    fn best_in(
        &self,
        c: usize,
        level: usize,
        lost: Option<&str>,
        avoid: Option<(&str, usize)>,
        skip: Skip<'_>,
    ) -> Option<Found> {
        let mut best: Option<Found> = None;
        for (load, used, name) in &self.levels[c][level] {
            if let Some((_, b_load, b_used, b_name, _)) = best.as_ref().map(|b| &b.0) {
                // Entries come in order: none further can beat what was found.
                if (load, used, name) > (b_load, b_used, b_name) {
                    break;
                }
            }
            if lost == Some(&**name) || skip(name, None) {
                continue;
            }
            let ix = &self.nodes[name];
            let avoided = avoid.and_then(|(n, d)| (n == &**name).then_some(d));
            let Some(&(used, d)) = ix.sets[&(c, level)]
                .devices
                .iter()
                .find(|(_, d)| Some(*d) != avoided && !skip(name, Some(*d)))
            else {
                continue;
            };
            let key = (level, *load, used, name.clone(), d);
            if best.as_ref().is_none_or(|b| key < b.0) {
                best = Some((key, name.clone(), d));
            }
        }
        best
    }
}
