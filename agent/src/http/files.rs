//! `/files/browse` and `/files/read`, restricted to the agent's sandboxes
//! (`<work_dir>/slaves/`): a path is resolved (symlinks included) before it is checked, so
//! nothing outside can be reached through a link in a sandbox. Mesos's JSON shapes and status
//! codes: 400 for a bad query, 404 for a path that does not exist or is not served.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::node::Node;

/// Largest `length` served by one read (Mesos's default page is 16 KiB; its limit is larger).
const READ_MAX: u64 = 4 << 20;

/// An error answer: status and plain-text message, as Mesos's endpoints give them.
type Refusal = (StatusCode, String);

fn error(status: StatusCode, message: impl Into<String>) -> Refusal {
    (status, message.into())
}

/// `/files/browse` query.
#[derive(Debug, Deserialize)]
pub(super) struct BrowseQuery {
    path: Option<String>,
}

/// `/files/read` query.
#[derive(Debug, Deserialize)]
pub(super) struct ReadQuery {
    path: Option<String>,
    offset: Option<String>,
    length: Option<String>,
}

/// The served path `requested` resolves to, or the error answer.
fn served(node: &Node, requested: Option<&str>) -> Result<PathBuf, Refusal> {
    let requested = requested
        .filter(|p| !p.is_empty())
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "Expecting 'path=value' in query."))?;
    let not_found = || error(StatusCode::NOT_FOUND, format!("{requested} not found"));
    let root =
        std::fs::canonicalize(node.config.work_dir.join("slaves")).map_err(|_| not_found())?;
    let path = std::fs::canonicalize(requested).map_err(|_| not_found())?;
    if path.starts_with(&root) {
        Ok(path)
    } else {
        Err(not_found())
    }
}

fn mode_string(mode: u32, is_dir: bool) -> String {
    let mut out = String::with_capacity(10);
    out.push(if is_dir { 'd' } else { '-' });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

fn entry(path: &Path, meta: &std::fs::Metadata) -> Value {
    json!({
        "path": path.display().to_string(),
        "size": meta.len(),
        "mode": mode_string(meta.permissions().mode(), meta.is_dir()),
        "mtime": meta.mtime(),
        "nlink": meta.nlink(),
        "uid": user_name(meta.uid()),
        "gid": group_name(meta.gid()),
    })
}

/// GET /files/browse?path=
pub(super) async fn browse(
    State(node): State<Arc<Node>>,
    Query(query): Query<BrowseQuery>,
) -> Result<Response, Refusal> {
    let path = served(&node, query.path.as_deref())?;
    let meta = std::fs::metadata(&path).map_err(|_| error(StatusCode::NOT_FOUND, "not found"))?;
    if !meta.is_dir() {
        return Ok(Json(json!([entry(&path, &meta)])).into_response());
    }
    let read = std::fs::read_dir(&path)
        .map_err(|_| error(StatusCode::NOT_FOUND, "cannot list the folder"))?;
    let mut entries: Vec<(PathBuf, std::fs::Metadata)> = read
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let list: Vec<Value> = entries.iter().map(|(p, m)| entry(p, m)).collect();
    Ok(Json(Value::Array(list)).into_response())
}

fn parse_number(name: &str, text: Option<&str>) -> Result<Option<i64>, Refusal> {
    text.map(|t| {
        t.parse::<i64>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse {name}: '{t}' is not a number"),
            )
        })
    })
    .transpose()
}

/// GET /files/read?path=&offset=&length=
pub(super) async fn read(
    State(node): State<Arc<Node>>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, Refusal> {
    let offset = parse_number("offset", query.offset.as_deref())?;
    let length = parse_number("length", query.length.as_deref())?;
    if offset.is_some_and(|o| o < -1) || length.is_some_and(|l| l < -1) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Negative offset or length provided",
        ));
    }
    let path = served(&node, query.path.as_deref())?;
    if path.is_dir() {
        return Err(error(StatusCode::BAD_REQUEST, "Cannot read a directory"));
    }
    let mut file = std::fs::File::open(&path)
        .map_err(|_| error(StatusCode::NOT_FOUND, "cannot read the file"))?;
    let size = file.metadata().map_or(0, |m| m.len());
    // Mesos: offset -1 (or none) asks only for the size.
    let Some(offset) = offset.filter(|o| *o >= 0).map(|o| o as u64) else {
        return Ok(Json(json!({"data": "", "offset": size})).into_response());
    };
    let length = length
        .filter(|l| *l >= 0)
        .map_or(READ_MAX, |l| (l as u64).min(READ_MAX));
    let start = offset.min(size);
    let mut buffer = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| (&mut file).take(length).read_to_end(&mut buffer))
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the file: {e}"),
            )
        })?;
    let data = String::from_utf8_lossy(&buffer).into_owned();
    Ok(Json(json!({"data": data, "offset": start})).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn modes_read_as_ls_shows_them() {
        assert_eq!(super::mode_string(0o644, false), "-rw-r--r--");
        assert_eq!(super::mode_string(0o755, true), "drwxr-xr-x");
    }
}
