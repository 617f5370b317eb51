//! Keyset pagination: `limit` plus an opaque cursor (the last id of the previous page). Ids
//! are UUIDv7, so id order is creation order and pages stay stable while rows are added.

use serde::Serialize;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: i64,
    pub after: Option<Uuid>,
}

impl PageRequest {
    /// Errors name the query parameter at fault and why.
    pub fn new(
        limit: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<PageRequest, (&'static str, String)> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let after = cursor
            .map(|c| {
                Uuid::parse_str(c)
                    .map_err(|_| ("cursor", "cursor is not one this API returned".to_owned()))
            })
            .transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// One more than the page, to know whether there is a next page.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// One page of a list. `nextCursor` is absent on the last page; pass it as `cursor` for the
/// next one.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    pub fn empty() -> Page<T> {
        Page {
            items: Vec::new(),
            next_cursor: None,
        }
    }

    /// Cuts the extra row fetched by [`PageRequest::fetch_limit`] and sets the cursor.
    pub fn from_rows(mut rows: Vec<T>, request: PageRequest, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let more = rows.len() as i64 > request.limit;
        rows.truncate(request.limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| id(r).to_string())
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}
