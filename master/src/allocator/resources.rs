//! The allocator's resource model: named scalars in fixed-point milli-units, port-style ranges,
//! reservations, and disk resources whose identity decides whether they can be merged or split.
//!
//! This module owns [`ResourceSet`] (a normalised bag of [`ResourceItem`]s) and [`Quantities`]
//! (per-name scalar totals, used for DRF shares, quotas and headroom). It knows nothing about
//! protobuf: the master converts Mesos `Resource` messages to and from these types.
//!
//! # Conventions
//! - **Fixed point.** Scalars are [`Milli`]: integer thousandths of a unit, which is what Mesos
//!   does internally (`Value::Scalar` arithmetic rounds to three decimal places). `0.1 + 0.2` is
//!   exactly `0.3` here, and summing and subtracting in any order gives the same result, so
//!   accounting never drifts. `mem` and `disk` are in MB, as in Mesos.
//! - **Identity.** Two items may merge only when their name, kind (scalar or ranges),
//!   reservation, provider, disk identity and opaque `extra` are all equal *and* they are
//!   divisible. A RAW pool (no `id`) merges with a RAW pool of the same provider and profile; two
//!   BLOCK disks never merge, even with the same id, and a BLOCK, MOUNT, RAW-with-id or
//!   persistent disk is only ever taken whole: it is an indivisible atom.
//! - **Normalised form.** A [`ResourceSet`] keeps items sorted by identity (then value, for
//!   atoms), with at most one item per divisible identity and no zero-valued items, so `==` is
//!   multiset equality.
//!
//! # Panics
//! Nothing here panics on input; invalid values are reported as [`ResourceError`].

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Thousandths of a unit in one [`Milli`] unit.
pub const MILLI_PER_UNIT: u64 = 1000;

/// The largest quantity of one resource name a single agent may report, in milli-units
/// (10^10 units: 10 PB of disk in MB). With [`MAX_AGENTS`](super::MAX_AGENTS) agents, cluster sums
/// still fit in a `u64`; see the compile-time assertion in the allocator.
pub const MAX_AGENT_SCALAR_MILLI: u64 = 10_000_000_000_000;

/// The largest number of items one [`ResourceSet`] may hold.
pub const MAX_ITEMS_PER_SET: usize = 1024;

/// The largest number of disjoint intervals in one [`RangeSet`].
pub const MAX_RANGES_PER_ITEM: usize = 4096;

/// Errors in resource values and resource arithmetic.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// A scalar was negative, NaN or infinite.
    #[error("scalar resource {name} has an invalid value {value}")]
    InvalidScalar {
        /// The resource name.
        name: String,
        /// The offending value.
        value: f64,
    },
    /// A scalar exceeded [`MAX_AGENT_SCALAR_MILLI`].
    #[error("scalar resource {name} exceeds the largest supported quantity")]
    ScalarTooLarge {
        /// The resource name.
        name: String,
    },
    /// A range had its begin after its end.
    #[error("range [{begin}, {end}] has its begin after its end")]
    InvalidRange {
        /// First value of the range.
        begin: u64,
        /// Last value of the range.
        end: u64,
    },
    /// A range set had more than [`MAX_RANGES_PER_ITEM`] intervals.
    #[error("a range set has more than {max} intervals")]
    TooManyRanges {
        /// The bound.
        max: usize,
    },
    /// A resource set had more than [`MAX_ITEMS_PER_SET`] items.
    #[error("a resource set has more than {max} items")]
    TooManyItems {
        /// The bound.
        max: usize,
    },
    /// A subtraction removed resources that the set does not hold.
    #[error("the resources to remove are not contained in the set")]
    NotContained,
}

/// A non-negative scalar quantity in thousandths of a unit (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub u64);

impl Milli {
    /// Zero.
    pub const ZERO: Milli = Milli(0);

    /// Converts whole units (for example `4` cpus) to milli-units, saturating.
    pub fn from_units(units: u64) -> Milli {
        Milli(units.saturating_mul(MILLI_PER_UNIT))
    }

    /// Converts a floating-point value, rounding to the nearest thousandth as Mesos does.
    pub fn from_f64(name: &str, value: f64) -> Result<Milli, ResourceError> {
        if !value.is_finite() || value < 0.0 {
            return Err(ResourceError::InvalidScalar {
                name: name.to_owned(),
                value,
            });
        }
        let milli = (value * MILLI_PER_UNIT as f64).round();
        if milli > MAX_AGENT_SCALAR_MILLI as f64 {
            return Err(ResourceError::ScalarTooLarge {
                name: name.to_owned(),
            });
        }
        Ok(Milli(milli as u64))
    }

    /// The value in units, for converting back to a Mesos `Value.Scalar`.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / MILLI_PER_UNIT as f64
    }

    /// `self - other`, or zero if `other` is larger.
    pub fn saturating_sub(self, other: Milli) -> Milli {
        Milli(self.0.saturating_sub(other.0))
    }

    /// `self + other`, saturating at `u64::MAX` (callers bound their inputs).
    pub fn saturating_add(self, other: Milli) -> Milli {
        Milli(self.0.saturating_add(other.0))
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:03}",
            self.0 / MILLI_PER_UNIT,
            self.0 % MILLI_PER_UNIT
        )
    }
}

/// A normalised set of inclusive `u64` intervals (sorted, disjoint, adjacent ones coalesced),
/// as Mesos uses for `ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Builds a set from inclusive `(begin, end)` pairs in any order, merging overlaps.
    pub fn new(mut ranges: Vec<(u64, u64)>) -> Result<RangeSet, ResourceError> {
        if let Some(&(begin, end)) = ranges.iter().find(|(b, e)| b > e) {
            return Err(ResourceError::InvalidRange { begin, end });
        }
        ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (begin, end) in ranges {
            match out.last_mut() {
                Some(last) if begin <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => out.push((begin, end)),
            }
        }
        if out.len() > MAX_RANGES_PER_ITEM {
            return Err(ResourceError::TooManyRanges {
                max: MAX_RANGES_PER_ITEM,
            });
        }
        Ok(RangeSet { ranges: out })
    }

    /// The normalised intervals.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many values the set holds.
    pub fn count(&self) -> u128 {
        self.ranges
            .iter()
            .map(|&(b, e)| u128::from(e - b) + 1)
            .sum()
    }

    /// Whether every value of `other` is in `self`.
    pub fn contains(&self, other: &RangeSet) -> bool {
        // Both are sorted: walk `self` once.
        let mut i = 0;
        for &(b, e) in &other.ranges {
            while i < self.ranges.len() && self.ranges[i].1 < b {
                i += 1;
            }
            match self.ranges.get(i) {
                Some(&(sb, se)) if sb <= b && e <= se => {}
                _ => return false,
            }
        }
        true
    }

    /// The union of two sets (may exceed [`MAX_RANGES_PER_ITEM`] only if both inputs are huge).
    pub fn union(&self, other: &RangeSet) -> Result<RangeSet, ResourceError> {
        let mut all = self.ranges.clone();
        all.extend_from_slice(&other.ranges);
        RangeSet::new(all)
    }

    /// `self` without the values of `other` (values of `other` not in `self` are ignored).
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::with_capacity(self.ranges.len());
        for &(mut b, e) in &self.ranges {
            let mut keep = true;
            for &(ob, oe) in &other.ranges {
                if oe < b || ob > e {
                    continue;
                }
                if ob > b {
                    out.push((b, ob - 1));
                }
                if oe >= e {
                    keep = false;
                    break;
                }
                b = oe + 1;
            }
            if keep {
                out.push((b, e));
            }
        }
        // Pieces of a normalised set stay sorted, disjoint and non-adjacent.
        RangeSet { ranges: out }
    }
}

/// How a reservation was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReservationKind {
    /// Made by the agent's `--resources` (operator, static).
    Static,
    /// Made by a RESERVE operation or the operator API.
    Dynamic,
}

/// A reservation of a resource for one role. Mesos's refined reservation stacks are flattened by
/// the master to the innermost reservation; whatever else it needs to rebuild the proto (labels,
/// the stack) it keeps in [`ResourceItem::extra`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reservation {
    /// The role the resource is reserved for.
    pub role: String,
    /// Static or dynamic.
    pub kind: ReservationKind,
    /// The principal that made a dynamic reservation.
    pub principal: Option<String>,
}

/// The type of a disk's `DiskInfo.Source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskSourceKind {
    /// A directory on a host filesystem: splittable.
    Path,
    /// A whole mounted filesystem: indivisible.
    Mount,
    /// A raw block device: indivisible.
    Block,
    /// Storage-provider capacity: a splittable pool without `id`, an indivisible volume with one.
    Raw,
}

/// What makes a disk resource distinct from other disk resources.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskIdentity {
    /// The source type; `None` is the agent's default (root) disk.
    pub source: Option<DiskSourceKind>,
    /// The source id (BLOCK device id, MOUNT or RAW volume id).
    pub id: Option<String>,
    /// The storage profile of a RAW pool or a provisioned disk.
    pub profile: Option<String>,
    /// The CSI vendor.
    pub vendor: Option<String>,
    /// The PATH or MOUNT root.
    pub root: Option<String>,
    /// The persistent-volume id, if this is a persistent volume.
    pub persistence_id: Option<String>,
}

impl DiskIdentity {
    /// A splittable RAW pool of a storage profile (a provider's capacity, no `id`).
    pub fn raw_pool(profile: &str) -> DiskIdentity {
        DiskIdentity {
            source: Some(DiskSourceKind::Raw),
            profile: Some(profile.to_owned()),
            ..DiskIdentity::default()
        }
    }

    /// A BLOCK disk with its id: always offered whole.
    pub fn block(id: &str) -> DiskIdentity {
        DiskIdentity {
            source: Some(DiskSourceKind::Block),
            id: Some(id.to_owned()),
            ..DiskIdentity::default()
        }
    }

    /// A MOUNT disk with its root: always offered whole.
    pub fn mount(root: &str) -> DiskIdentity {
        DiskIdentity {
            source: Some(DiskSourceKind::Mount),
            root: Some(root.to_owned()),
            ..DiskIdentity::default()
        }
    }

    /// Whether the disk can be split and merged, following Mesos's `Resources` rules: persistent
    /// volumes, MOUNT and BLOCK disks and RAW disks with an id are indivisible.
    pub fn is_divisible(&self) -> bool {
        if self.persistence_id.is_some() {
            return false;
        }
        match self.source {
            None | Some(DiskSourceKind::Path) => true,
            Some(DiskSourceKind::Mount | DiskSourceKind::Block) => false,
            Some(DiskSourceKind::Raw) => self.id.is_none(),
        }
    }
}

/// The value of one resource item.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceValue {
    /// A scalar in milli-units (cpus, mem, disk, gpus, ...).
    Scalar(Milli),
    /// A set of ranges (ports).
    Ranges(RangeSet),
}

/// One resource: a name, a value and everything that decides its identity.
///
/// The identity fields are reference-counted so that cloning an item (every offer and every
/// allocation copies items) costs a few counter increments, not string allocations.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceItem {
    /// The resource name (`cpus`, `mem`, `disk`, `ports`, ...).
    pub name: Arc<str>,
    /// The quantity.
    pub value: ResourceValue,
    /// The reservation, or `None` for unreserved (`*`) resources.
    pub reservation: Option<Arc<Reservation>>,
    /// Disk identity, for disk resources that have `DiskInfo`.
    pub disk: Option<Arc<DiskIdentity>>,
    /// The resource provider id, for provider resources.
    pub provider: Option<Arc<str>>,
    /// An opaque identity extension the allocator compares but never interprets: the master puts a
    /// canonical encoding of proto fields it must round-trip (reservation labels, volume info,
    /// source metadata) here so that items differing in them never merge.
    pub extra: Option<Arc<str>>,
}

impl ResourceItem {
    /// An unreserved scalar such as `cpus:4` (value in units, rounded to a thousandth).
    pub fn scalar(name: &str, value: f64) -> Result<ResourceItem, ResourceError> {
        Ok(Self::scalar_milli(name, Milli::from_f64(name, value)?))
    }

    /// An unreserved scalar in milli-units.
    pub fn scalar_milli(name: &str, value: Milli) -> ResourceItem {
        ResourceItem {
            name: Arc::from(name),
            value: ResourceValue::Scalar(value),
            reservation: None,
            disk: None,
            provider: None,
            extra: None,
        }
    }

    /// An unreserved ranges resource such as `ports:[31000-32000]`.
    pub fn ranges(name: &str, ranges: Vec<(u64, u64)>) -> Result<ResourceItem, ResourceError> {
        Ok(ResourceItem {
            value: ResourceValue::Ranges(RangeSet::new(ranges)?),
            ..Self::scalar_milli(name, Milli::ZERO)
        })
    }

    /// This item reserved for `role`.
    pub fn reserved(mut self, role: &str, kind: ReservationKind) -> ResourceItem {
        self.reservation = Some(Arc::new(Reservation {
            role: role.to_owned(),
            kind,
            principal: None,
        }));
        self
    }

    /// This item with a disk identity.
    pub fn with_disk(mut self, disk: DiskIdentity) -> ResourceItem {
        self.disk = Some(Arc::new(disk));
        self
    }

    /// This item from a resource provider.
    pub fn with_provider(mut self, provider: &str) -> ResourceItem {
        self.provider = Some(Arc::from(provider));
        self
    }

    /// The scalar value, if this is a scalar.
    pub fn scalar_value(&self) -> Option<Milli> {
        match self.value {
            ResourceValue::Scalar(m) => Some(m),
            ResourceValue::Ranges(_) => None,
        }
    }

    /// Whether the item may be split and merged (see the module docs).
    pub fn is_divisible(&self) -> bool {
        match self.value {
            ResourceValue::Ranges(_) => true,
            ResourceValue::Scalar(_) => self.disk.as_deref().is_none_or(DiskIdentity::is_divisible),
        }
    }

    /// Whether the item is unreserved or reserved for exactly `role`.
    pub fn is_allocatable_to(&self, role: &str) -> bool {
        self.reservation.as_ref().is_none_or(|r| r.role == role)
    }

    fn is_empty(&self) -> bool {
        match &self.value {
            ResourceValue::Scalar(m) => m.is_zero(),
            ResourceValue::Ranges(r) => r.is_empty(),
        }
    }

    fn kind_tag(&self) -> u8 {
        match self.value {
            ResourceValue::Scalar(_) => 0,
            ResourceValue::Ranges(_) => 1,
        }
    }

    /// Orders by identity only (everything but the value). Items cloned from one another share
    /// their `Arc`s, so pointer equality settles most comparisons without touching the strings.
    fn identity_cmp(&self, other: &ResourceItem) -> Ordering {
        arc_cmp(&self.name, &other.name)
            .then_with(|| self.kind_tag().cmp(&other.kind_tag()))
            .then_with(|| opt_arc_cmp(&self.reservation, &other.reservation))
            .then_with(|| opt_arc_cmp(&self.provider, &other.provider))
            .then_with(|| opt_arc_cmp(&self.disk, &other.disk))
            .then_with(|| opt_arc_cmp(&self.extra, &other.extra))
    }

    /// The normal-form order: identity, then value (only atoms share an identity).
    fn normal_cmp(&self, other: &ResourceItem) -> Ordering {
        self.identity_cmp(other)
            .then_with(|| self.value.cmp(&other.value))
    }
}

/// A normalised bag of resources (see the module docs for the normal form).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceSet {
    items: Vec<ResourceItem>,
}

impl ResourceSet {
    /// The empty set.
    pub fn new() -> ResourceSet {
        ResourceSet::default()
    }

    /// Builds a set from items, merging divisible items of equal identity.
    pub fn from_items(
        items: impl IntoIterator<Item = ResourceItem>,
    ) -> Result<ResourceSet, ResourceError> {
        let mut set = ResourceSet::new();
        for item in items {
            set.add_item(item)?;
        }
        Ok(set)
    }

    /// The items, in normal form.
    pub fn items(&self) -> &[ResourceItem] {
        &self.items
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds one item: merged into the item of equal identity if divisible, else kept as an atom.
    pub fn add_item(&mut self, item: ResourceItem) -> Result<(), ResourceError> {
        if item.is_empty() {
            return Ok(());
        }
        if item.is_divisible() {
            if let Ok(i) = self.items.binary_search_by(|x| x.identity_cmp(&item)) {
                let merged = merge_values(&self.items[i].value, &item.value, &item.name)?;
                self.items[i].value = merged;
                return Ok(());
            }
        }
        if self.items.len() >= MAX_ITEMS_PER_SET {
            return Err(ResourceError::TooManyItems {
                max: MAX_ITEMS_PER_SET,
            });
        }
        let at = self
            .items
            .partition_point(|x| x.normal_cmp(&item) != Ordering::Greater);
        self.items.insert(at, item);
        Ok(())
    }

    /// Adds every item of `other`.
    pub fn add(&mut self, other: &ResourceSet) -> Result<(), ResourceError> {
        for item in &other.items {
            self.add_item(item.clone())?;
        }
        Ok(())
    }

    /// Whether `self` holds all of `other` (multiset containment; atoms must match exactly).
    pub fn contains(&self, other: &ResourceSet) -> bool {
        let mut i = 0;
        while i < other.items.len() {
            let item = &other.items[i];
            if item.is_divisible() {
                if !self.contains_divisible(item) {
                    return false;
                }
                i += 1;
                continue;
            }
            // Atoms equal to `item` are adjacent in normal form: count them on both sides.
            let wanted = other.items[i..].iter().take_while(|x| *x == item).count();
            let held = self.count_atom(item);
            if held < wanted {
                return false;
            }
            i += wanted;
        }
        true
    }

    /// Removes `other` from `self`; on error `self` is unchanged.
    pub fn subtract(&mut self, other: &ResourceSet) -> Result<(), ResourceError> {
        if !self.contains(other) {
            return Err(ResourceError::NotContained);
        }
        for item in &other.items {
            self.remove_contained(item);
        }
        debug_assert!(self.is_normal());
        Ok(())
    }

    /// `self - other` as a new set, or an error if `other` is not contained.
    pub fn checked_sub(&self, other: &ResourceSet) -> Result<ResourceSet, ResourceError> {
        let mut out = self.clone();
        out.subtract(other)?;
        Ok(out)
    }

    /// `self + other` as a new set.
    pub fn checked_add(&self, other: &ResourceSet) -> Result<ResourceSet, ResourceError> {
        let mut out = self.clone();
        out.add(other)?;
        Ok(out)
    }

    /// The items for which `keep` holds.
    pub fn filter(&self, mut keep: impl FnMut(&ResourceItem) -> bool) -> ResourceSet {
        // A subsequence of a normal-form vector is in normal form.
        ResourceSet {
            items: self.items.iter().filter(|x| keep(x)).cloned().collect(),
        }
    }

    /// Total scalar quantity per name (ranges are not counted), summed across identities.
    pub fn quantities(&self) -> Quantities {
        let mut q = Quantities::new();
        for item in &self.items {
            if let Some(m) = item.scalar_value() {
                q.add(&item.name, m);
            }
        }
        q
    }

    /// Checks that no name's total exceeds [`MAX_AGENT_SCALAR_MILLI`] (the bound on one agent).
    pub(crate) fn check_bounds(&self) -> Result<(), ResourceError> {
        for (name, m) in self.quantities().iter() {
            if m.0 > MAX_AGENT_SCALAR_MILLI {
                return Err(ResourceError::ScalarTooLarge {
                    name: name.to_owned(),
                });
            }
        }
        Ok(())
    }

    fn contains_divisible(&self, item: &ResourceItem) -> bool {
        let Ok(i) = self.items.binary_search_by(|x| x.identity_cmp(item)) else {
            return false;
        };
        match (&self.items[i].value, &item.value) {
            (ResourceValue::Scalar(have), ResourceValue::Scalar(want)) => have >= want,
            (ResourceValue::Ranges(have), ResourceValue::Ranges(want)) => have.contains(want),
            _ => false,
        }
    }

    fn count_atom(&self, item: &ResourceItem) -> usize {
        let start = self
            .items
            .partition_point(|x| x.normal_cmp(item) == Ordering::Less);
        self.items[start..]
            .iter()
            .take_while(|x| *x == item)
            .count()
    }

    /// Removes one item already known to be contained.
    fn remove_contained(&mut self, item: &ResourceItem) {
        if !item.is_divisible() {
            let at = self
                .items
                .partition_point(|x| x.normal_cmp(item) == Ordering::Less);
            debug_assert!(self.items.get(at) == Some(item));
            self.items.remove(at);
            return;
        }
        let Ok(i) = self.items.binary_search_by(|x| x.identity_cmp(item)) else {
            debug_assert!(false, "subtract: item vanished after the containment check");
            return;
        };
        let left = match (&self.items[i].value, &item.value) {
            (ResourceValue::Scalar(have), ResourceValue::Scalar(take)) => {
                ResourceValue::Scalar(have.saturating_sub(*take))
            }
            (ResourceValue::Ranges(have), ResourceValue::Ranges(take)) => {
                ResourceValue::Ranges(have.difference(take))
            }
            (have, _) => have.clone(),
        };
        self.items[i].value = left;
        if self.items[i].is_empty() {
            self.items.remove(i);
        }
    }

    /// Checks the normal form (used by debug assertions and tests).
    pub(crate) fn is_normal(&self) -> bool {
        let ordered = self.items.windows(2).all(|w| match w[0].normal_cmp(&w[1]) {
            Ordering::Less => {
                // Divisible items of one identity must have been merged.
                !(w[0].is_divisible() && w[0].identity_cmp(&w[1]) == Ordering::Equal)
            }
            Ordering::Equal => !w[0].is_divisible(),
            Ordering::Greater => false,
        });
        ordered && self.items.iter().all(|x| !x.is_empty())
    }
}

fn arc_cmp<T: Ord + ?Sized>(a: &Arc<T>, b: &Arc<T>) -> Ordering {
    if Arc::ptr_eq(a, b) {
        Ordering::Equal
    } else {
        a.cmp(b)
    }
}

fn opt_arc_cmp<T: Ord + ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => arc_cmp(x, y),
        _ => a.is_some().cmp(&b.is_some()),
    }
}

fn merge_values(
    a: &ResourceValue,
    b: &ResourceValue,
    name: &str,
) -> Result<ResourceValue, ResourceError> {
    match (a, b) {
        (ResourceValue::Scalar(x), ResourceValue::Scalar(y)) => match x.0.checked_add(y.0) {
            Some(sum) => Ok(ResourceValue::Scalar(Milli(sum))),
            None => Err(ResourceError::ScalarTooLarge {
                name: name.to_owned(),
            }),
        },
        (ResourceValue::Ranges(x), ResourceValue::Ranges(y)) => {
            Ok(ResourceValue::Ranges(x.union(y)?))
        }
        // Equal identity implies equal kind tags.
        _ => Err(ResourceError::NotContained),
    }
}

/// Scalar totals per resource name, sorted by name. Absent names are zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quantities {
    entries: Vec<(String, Milli)>,
}

impl Quantities {
    /// No quantities.
    pub fn new() -> Quantities {
        Quantities::default()
    }

    /// Builds quantities from `(name, units)` pairs, e.g. `[("cpus", 0.01)]`.
    pub fn from_units(pairs: &[(&str, f64)]) -> Result<Quantities, ResourceError> {
        let mut q = Quantities::new();
        for &(name, value) in pairs {
            q.add(name, Milli::from_f64(name, value)?);
        }
        Ok(q)
    }

    /// The quantity of `name` (zero if absent).
    pub fn get(&self, name: &str) -> Milli {
        self.lookup(name).unwrap_or(Milli::ZERO)
    }

    /// The quantity of `name`, or `None` if absent (used where absent means "unlimited").
    pub fn lookup(&self, name: &str) -> Option<Milli> {
        self.entries
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Adds `m` to `name`.
    pub fn add(&mut self, name: &str, m: Milli) {
        if m.is_zero() {
            return;
        }
        match self.entries.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.saturating_add(m),
            Err(i) => self.entries.insert(i, (name.to_owned(), m)),
        }
    }

    /// Subtracts `m` from `name`, flooring at zero (absent names stay absent).
    pub fn saturating_sub(&mut self, name: &str, m: Milli) {
        if let Ok(i) = self.entries.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            self.entries[i].1 = self.entries[i].1.saturating_sub(m);
            if self.entries[i].1.is_zero() {
                self.entries.remove(i);
            }
        }
    }

    /// Adds every entry of `other`.
    pub fn add_all(&mut self, other: &Quantities) {
        for (name, m) in other.iter() {
            self.add(name, m);
        }
    }

    /// Subtracts every entry of `other`, flooring each name at zero.
    pub fn saturating_sub_all(&mut self, other: &Quantities) {
        for (name, m) in other.iter() {
            self.saturating_sub(name, m);
        }
    }

    /// Whether every entry of `other` is at most the same entry of `self`.
    pub fn contains(&self, other: &Quantities) -> bool {
        other.iter().all(|(name, m)| self.get(name) >= m)
    }

    /// Whether there is no non-zero entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The non-zero entries, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Milli)> + '_ {
        self.entries.iter().map(|(n, m)| (n.as_str(), *m))
    }
}

impl fmt::Display for Quantities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, m)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{name}:{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: &str, mb: u64) -> ResourceItem {
        ResourceItem::scalar_milli("disk", Milli::from_units(mb)).with_disk(DiskIdentity::block(id))
    }

    fn pool(provider: &str, profile: &str, mb: u64) -> ResourceItem {
        ResourceItem::scalar_milli("disk", Milli::from_units(mb))
            .with_disk(DiskIdentity::raw_pool(profile))
            .with_provider(provider)
    }

    #[test]
    fn fixed_point_does_not_drift() {
        let mut set = ResourceSet::new();
        for _ in 0..10 {
            set.add_item(ResourceItem::scalar("cpus", 0.1).unwrap())
                .unwrap();
        }
        assert_eq!(set.quantities().get("cpus"), Milli::from_units(1));
        let tenth = ResourceSet::from_items([ResourceItem::scalar("cpus", 0.1).unwrap()]).unwrap();
        for _ in 0..10 {
            set.subtract(&tenth).unwrap();
        }
        assert!(set.is_empty());
        assert_eq!(Milli::from_f64("cpus", 0.0004).unwrap(), Milli::ZERO);
        assert!(Milli::from_f64("cpus", -1.0).is_err());
        assert!(Milli::from_f64("cpus", f64::NAN).is_err());
    }

    #[test]
    fn block_disks_never_merge_or_split() {
        let set = ResourceSet::from_items([block("a", 100), block("b", 100)]).unwrap();
        assert_eq!(set.items().len(), 2);
        // Taking part of a BLOCK disk is impossible.
        let half = ResourceSet::from_items([block("a", 50)]).unwrap();
        assert!(!set.contains(&half));
        assert_eq!(set.checked_sub(&half), Err(ResourceError::NotContained));
        // Taking it whole leaves the other disk untouched.
        let whole = ResourceSet::from_items([block("a", 100)]).unwrap();
        let left = set.checked_sub(&whole).unwrap();
        assert_eq!(left.items(), &[block("b", 100)]);
        // The same disk added twice is two atoms, and one subtraction removes exactly one.
        let twice = ResourceSet::from_items([block("a", 100), block("a", 100)]).unwrap();
        assert_eq!(twice.items().len(), 2);
        assert_eq!(twice.checked_sub(&whole).unwrap().items().len(), 1);
        let three = ResourceSet::from_items([block("a", 100), block("a", 100), block("a", 100)]);
        assert!(!twice.contains(&three.unwrap()));
    }

    #[test]
    fn raw_pools_merge_by_provider_and_profile() {
        let set = ResourceSet::from_items([
            pool("rp1", "fast", 100),
            pool("rp1", "fast", 50),
            pool("rp1", "slow", 10),
            pool("rp2", "fast", 10),
        ])
        .unwrap();
        assert_eq!(set.items().len(), 3);
        let part = ResourceSet::from_items([pool("rp1", "fast", 120)]).unwrap();
        let left = set.checked_sub(&part).unwrap();
        assert!(left.items().contains(&pool("rp1", "fast", 30)));
        assert_eq!(left.quantities().get("disk"), Milli::from_units(50));
        let too_much = ResourceSet::from_items([pool("rp1", "fast", 151)]).unwrap();
        assert!(!set.contains(&too_much));
    }

    #[test]
    fn reservations_and_kinds_keep_items_apart() {
        let cpus = ResourceItem::scalar("cpus", 2.0).unwrap();
        let set = ResourceSet::from_items([
            cpus.clone(),
            cpus.clone().reserved("a", ReservationKind::Static),
            cpus.clone().reserved("a", ReservationKind::Dynamic),
        ])
        .unwrap();
        assert_eq!(set.items().len(), 3);
        assert_eq!(set.quantities().get("cpus"), Milli::from_units(6));
        let unreserved = set.filter(|x| x.reservation.is_none());
        assert_eq!(unreserved.items(), &[cpus]);
    }

    #[test]
    fn ranges_merge_split_and_contain() {
        let set = ResourceSet::from_items([
            ResourceItem::ranges("ports", vec![(10, 20)]).unwrap(),
            ResourceItem::ranges("ports", vec![(21, 30), (40, 50)]).unwrap(),
        ])
        .unwrap();
        assert_eq!(set.items().len(), 1);
        let ResourceValue::Ranges(r) = &set.items()[0].value else {
            panic!("not ranges")
        };
        assert_eq!(r.ranges(), &[(10, 30), (40, 50)]);
        let mid = ResourceSet::from_items([ResourceItem::ranges("ports", vec![(15, 42)]).unwrap()]);
        assert!(!set.contains(mid.as_ref().unwrap()));
        let ok = ResourceSet::from_items([ResourceItem::ranges("ports", vec![(15, 25)]).unwrap()]);
        let left = set.checked_sub(ok.as_ref().unwrap()).unwrap();
        let ResourceValue::Ranges(r) = &left.items()[0].value else {
            panic!("not ranges")
        };
        assert_eq!(r.ranges(), &[(10, 14), (26, 30), (40, 50)]);
        assert!(RangeSet::new(vec![(5, 4)]).is_err());
    }
}
