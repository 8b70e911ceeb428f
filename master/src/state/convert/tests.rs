//! Conversion round trips: whatever a resource carries comes back unchanged; formats convert as
//! Mesos's `convertResourceFormat`; bad input is an error, never a panic.

use mesoblk_proto::mesos::v1::resource::{disk_info, reservation_info, DiskInfo, ReservationInfo};
use mesoblk_proto::mesos::v1::{value, Label, Labels, Resource, ResourceProviderId, Volume};
use proptest::prelude::*;

use super::*;
use mesoblk_proto::resource::scalar;

fn reservation(role: &str, dynamic: bool, principal: Option<&str>) -> ReservationInfo {
    ReservationInfo {
        r#type: Some(if dynamic {
            reservation_info::Type::Dynamic
        } else {
            reservation_info::Type::Static
        } as i32),
        role: Some(role.into()),
        principal: principal.map(str::to_owned),
        labels: None,
    }
}

fn raw_pool(profile: &str, mb: f64) -> Resource {
    Resource {
        provider_id: Some(ResourceProviderId { value: "rp".into() }),
        disk: Some(DiskInfo {
            source: Some(disk_info::Source {
                r#type: disk_info::source::Type::Raw as i32,
                vendor: Some("mesoblk".into()),
                profile: Some(profile.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..scalar("disk", mb)
    }
}

#[test]
fn plain_resources_need_no_extra() {
    let cpus = scalar("cpus", 2.5);
    let item = to_item(&cpus).unwrap();
    assert!(item.extra.is_none());
    assert_eq!(to_proto(&item), cpus);
    let pool = raw_pool("fast", 1024.0);
    let item = to_item(&pool).unwrap();
    assert!(item.extra.is_none(), "a RAW pool is fully modelled");
    assert!(item.is_divisible());
    assert_eq!(to_proto(&item), pool);
}

#[test]
#[allow(deprecated)]
fn legacy_format_upgrades_and_downgrades() {
    let legacy = Resource {
        role: Some("web".into()),
        reservation: Some(ReservationInfo {
            principal: Some("ops".into()),
            ..Default::default()
        }),
        ..scalar("cpus", 1.0)
    };
    let item = to_item(&legacy).unwrap();
    let reserved = item.reservation.as_ref().unwrap();
    assert_eq!(
        (reserved.role.as_str(), reserved.kind),
        ("web", ReservationKind::Dynamic)
    );
    let mut back = to_proto(&item);
    assert_eq!(
        back.reservations,
        vec![reservation("web", true, Some("ops"))]
    );
    assert!(downgrade(&mut back));
    assert_eq!(back, legacy);
    let mut unreserved = scalar("mem", 1.0);
    assert!(downgrade(&mut unreserved));
    assert_eq!(
        unreserved.role.as_deref(),
        Some("*"),
        "legacy offers say role *"
    );
    let mut refined = Resource {
        reservations: vec![
            reservation("a", false, None),
            reservation("a/b", true, None),
        ],
        ..scalar("cpus", 1.0)
    };
    assert!(!downgrade(&mut refined));
}

#[test]
fn unmodelled_fields_ride_in_extra_and_keep_items_apart() {
    let labelled = |value: &str| Resource {
        reservations: vec![ReservationInfo {
            labels: Some(Labels {
                labels: vec![Label {
                    key: "k".into(),
                    value: Some(value.into()),
                }],
            }),
            ..reservation("r", true, Some("p"))
        }],
        ..scalar("cpus", 1.0)
    };
    let a = to_item(&labelled("a")).unwrap();
    let b = to_item(&labelled("b")).unwrap();
    assert!(a.extra.is_some());
    let set = ResourceSet::from_items([a.clone(), b, a.clone()]).unwrap();
    assert_eq!(set.items().len(), 2, "different labels never merge");
    assert_eq!(to_proto(&set.items()[0]).scalar.unwrap().value, 2.0);
    let volume = Resource {
        disk: Some(DiskInfo {
            persistence: Some(disk_info::Persistence {
                id: "v1".into(),
                principal: Some("p".into()),
            }),
            volume: Some(Volume {
                mode: mesoblk_proto::mesos::v1::volume::Mode::Rw as i32,
                container_path: "data".into(),
                ..Default::default()
            }),
            source: None,
        }),
        reservations: vec![reservation("r", true, Some("p"))],
        ..scalar("disk", 64.0)
    };
    let item = to_item(&volume).unwrap();
    assert!(!item.is_divisible(), "a persistent volume is an atom");
    assert_eq!(to_proto(&item), volume);
}

#[test]
fn invalid_resources_get_mesos_messages() {
    let cases = [
        (scalar("", 1.0), "Empty resource name"),
        (scalar("cpus", -1.0), "Invalid scalar resource: value <= 0"),
        (
            Resource {
                disk: Some(DiskInfo::default()),
                ..scalar("cpus", 1.0)
            },
            "DiskInfo should not be set for cpus resource",
        ),
        (
            Resource {
                r#type: value::Type::Ranges as i32,
                scalar: None,
                ranges: Some(value::Ranges {
                    range: vec![value::Range { begin: 5, end: 1 }],
                }),
                ..scalar("ports", 0.0)
            },
            "Invalid ranges resource: begin > end",
        ),
        (
            Resource {
                reservations: vec![reservation("*", false, None)],
                ..scalar("cpus", 1.0)
            },
            "Invalid reservation: role \"*\" cannot be reserved",
        ),
    ];
    for (resource, message) in cases {
        assert_eq!(to_item(&resource).unwrap_err().0, message, "{resource:?}");
    }
}

#[test]
fn stringify_reads_like_mesos() {
    let mut resources = vec![scalar("cpus", 2.0), scalar("mem", 128.0)];
    allocate(&mut resources, "*");
    assert_eq!(
        stringify(&resources),
        "cpus(allocated: *):2; mem(allocated: *):128"
    );
}

fn any_resource() -> impl Strategy<Value = Resource> {
    (
        prop_oneof![Just("cpus"), Just("mem"), Just("disk"), Just("ports")],
        0u64..10_000_000,
        proptest::collection::vec(
            (
                "[a-z]{1,4}",
                any::<bool>(),
                proptest::option::of("[a-z]{1,3}"),
            ),
            0..3,
        ),
        proptest::option::of("[a-z]{1,3}"),
        0usize..6,
        proptest::option::of("[a-z]{0,3}"),
    )
        .prop_map(|(name, milli, stack, provider, disk_kind, label)| {
            let mut r = if name == "ports" {
                Resource {
                    r#type: value::Type::Ranges as i32,
                    scalar: None,
                    ranges: Some(value::Ranges {
                        range: vec![
                            value::Range {
                                begin: milli,
                                end: milli + 10,
                            },
                            value::Range {
                                begin: milli + 12,
                                end: milli + 20,
                            },
                        ],
                    }),
                    ..scalar(name, 0.0)
                }
            } else {
                scalar(name, milli as f64 / 1000.0)
            };
            let mut role = String::new();
            for (part, dynamic, principal) in stack {
                role = if role.is_empty() {
                    part
                } else {
                    format!("{role}/{part}")
                };
                let mut info = reservation(&role, dynamic, principal.as_deref());
                if let Some(value) = &label {
                    info.labels = Some(Labels {
                        labels: vec![Label {
                            key: "k".into(),
                            value: Some(value.clone()),
                        }],
                    });
                }
                r.reservations.push(info);
            }
            r.provider_id = provider.map(|value| ResourceProviderId { value });
            if name == "disk" && disk_kind > 0 {
                let kind = [
                    disk_info::source::Type::Path,
                    disk_info::source::Type::Mount,
                    disk_info::source::Type::Block,
                    disk_info::source::Type::Raw,
                    disk_info::source::Type::Raw,
                ][disk_kind - 1];
                let rooted = matches!(
                    kind,
                    disk_info::source::Type::Path | disk_info::source::Type::Mount
                );
                r.disk = Some(DiskInfo {
                    source: Some(disk_info::Source {
                        r#type: kind as i32,
                        mount: (kind == disk_info::source::Type::Mount).then(|| {
                            disk_info::source::Mount {
                                root: label.clone(),
                            }
                        }),
                        path: (kind == disk_info::source::Type::Path).then(|| {
                            disk_info::source::Path {
                                root: label.clone(),
                            }
                        }),
                        id: (!rooted && disk_kind == 5).then(|| "vol".into()),
                        profile: (!rooted).then(|| "fast".into()),
                        vendor: Some("mesoblk".into()),
                        metadata: label.clone().map(|value| Labels {
                            labels: vec![Label {
                                key: "path".into(),
                                value: Some(value),
                            }],
                        }),
                    }),
                    ..Default::default()
                });
            }
            r
        })
}

proptest! {
    #[test]
    fn every_field_round_trips(resource in any_resource()) {
        let item = to_item(&resource).expect("valid");
        prop_assert_eq!(to_proto(&item), resource.clone());
        // A second conversion of the output models the same item.
        prop_assert_eq!(to_item(&to_proto(&item)).expect("valid"), item);
    }

    #[test]
    fn conversion_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(resource) = Resource::decode(bytes.as_slice()) {
            if let Ok(item) = to_item(&resource) {
                let _ = to_proto(&item);
            }
        }
    }
}
