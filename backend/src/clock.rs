//! Clock entries: clock in/out, current status and per-day history for a user.
//!
//! A user clocks themselves in and out (an admin may too, to correct a forgotten one);
//! status and history are for whoever may see the user ([`Viewer::can_see`]). Anyone else
//! gets the 404 of a user that does not exist.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, Time};

use crate::AppState;
use crate::auth::Viewer;
use crate::error::{AppError, is_foreign_key_violation, unique_violation};
use crate::extract::{ApiQuery, UserId, short_quote};
use crate::users::{ensure_user_exists, user_not_found};

/// Days covered when neither `from` nor `to` is given (today included).
const DEFAULT_HISTORY_DAYS: i64 = 30;
/// Largest accepted range, inclusive of both ends: a leap year.
const MAX_HISTORY_DAYS: i64 = 366;

const ENTRY_COLUMNS: &str = "id, user_id, clock_in, clock_out";

#[derive(Debug, Clone, FromRow)]
struct EntryRow {
    id: i64,
    user_id: i64,
    clock_in: OffsetDateTime,
    clock_out: Option<OffsetDateTime>,
}

/// An entry as returned by the API.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: i64,
    pub user_id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub clock_in: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub clock_out: Option<OffsetDateTime>,
    /// Whole seconds between clock-in and clock-out; null while the entry is open.
    pub duration_seconds: Option<i64>,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            clock_in: row.clock_in,
            clock_out: row.clock_out,
            duration_seconds: row
                .clock_out
                .map(|out| (out - row.clock_in).whole_seconds()),
        }
    }
}

/// 404 unless the viewer may see the user.
async fn may_read(state: &AppState, viewer: &Viewer, user_id: i64) -> Result<(), AppError> {
    if viewer.can_see(&state.pool, user_id).await? {
        Ok(())
    } else {
        Err(user_not_found(user_id))
    }
}

/// The user themselves or an admin; a manager who sees the user gets 403, anyone else 404.
async fn may_write(state: &AppState, viewer: &Viewer, user_id: i64) -> Result<(), AppError> {
    if viewer.user_id == user_id || viewer.is_admin() {
        return Ok(());
    }
    may_read(state, viewer, user_id).await?;
    Err(AppError::Status(
        StatusCode::FORBIDDEN,
        "only the user or an admin may clock them in or out".to_owned(),
    ))
}

/// `POST /users/{id}/clock/in` → 201 with the new open entry; 409 if one is open.
pub async fn clock_in(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(user_id): UserId,
) -> Result<(StatusCode, Json<Entry>), AppError> {
    may_write(&state, &viewer, user_id).await?;
    // No pre-check: the partial unique index decides, so two concurrent requests
    // cannot both open an entry.
    let result = sqlx::query_as::<_, EntryRow>(&format!(
        "INSERT INTO clock_entries (user_id) VALUES ($1) RETURNING {ENTRY_COLUMNS}"
    ))
    .bind(user_id)
    .fetch_one(&state.pool)
    .await;
    match result {
        Ok(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        Err(err) if unique_violation(&err) == Some("clock_entries_one_open_per_user") => Err(
            AppError::conflict(format!("user {user_id} is already clocked in")),
        ),
        Err(err) if is_foreign_key_violation(&err) => Err(user_not_found(user_id)),
        Err(err) => Err(err.into()),
    }
}

/// `POST /users/{id}/clock/out` → 200 with the closed entry; 409 if none is open.
pub async fn clock_out(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(user_id): UserId,
) -> Result<Json<Entry>, AppError> {
    may_write(&state, &viewer, user_id).await?;
    // GREATEST guards the CHECK constraint against the database clock stepping back.
    let closed = sqlx::query_as::<_, EntryRow>(&format!(
        "UPDATE clock_entries SET clock_out = GREATEST(now(), clock_in)
         WHERE user_id = $1 AND clock_out IS NULL
         RETURNING {ENTRY_COLUMNS}"
    ))
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    match closed {
        Some(row) => Ok(Json(row.into())),
        None => {
            ensure_user_exists(&state.pool, user_id).await?;
            Err(AppError::conflict(format!(
                "user {user_id} is not clocked in"
            )))
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub clocked_in: bool,
    pub entry: Option<Entry>,
}

/// `GET /users/{id}/clock/status`.
pub async fn status(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(user_id): UserId,
) -> Result<Json<Status>, AppError> {
    may_read(&state, &viewer, user_id).await?;
    let open = sqlx::query_as::<_, EntryRow>(&format!(
        "SELECT {ENTRY_COLUMNS} FROM clock_entries WHERE user_id = $1 AND clock_out IS NULL"
    ))
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    if open.is_none() {
        // An open entry implies the user exists (foreign key); only check otherwise.
        ensure_user_exists(&state.pool, user_id).await?;
    }
    Ok(Json(Status {
        clocked_in: open.is_some(),
        entry: open.map(Entry::from),
    }))
}

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub entries: Vec<Entry>,
    pub days: Vec<DayTotal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayTotal {
    #[serde(serialize_with = "serialize_date")]
    pub date: Date,
    pub worked_seconds: i64,
}

/// `GET /users/{id}/clock/history?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive).
pub async fn history(
    State(state): State<AppState>,
    viewer: Viewer,
    UserId(user_id): UserId,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<History>, AppError> {
    may_read(&state, &viewer, user_id).await?;
    let now = OffsetDateTime::now_utc();
    let (from, to) = resolve_range(params.from.as_deref(), params.to.as_deref(), now.date())?;
    let start = from.midnight().assume_utc();
    let end = to
        .next_day()
        .ok_or_else(|| AppError::bad_request("to is out of range"))?
        .midnight()
        .assume_utc();

    ensure_user_exists(&state.pool, user_id).await?;
    // Entries overlapping [start, end), including ones still open.
    let rows = sqlx::query_as::<_, EntryRow>(&format!(
        "SELECT {ENTRY_COLUMNS} FROM clock_entries
         WHERE user_id = $1 AND clock_in < $3 AND (clock_out IS NULL OR clock_out > $2)
         ORDER BY clock_in, id"
    ))
    .bind(user_id)
    .bind(start)
    .bind(end)
    .fetch_all(&state.pool)
    .await?;

    let days = daily_totals(&rows, from, to, now);
    Ok(Json(History {
        entries: rows.into_iter().map(Entry::from).collect(),
        days,
    }))
}

/// Applies defaults and limits to the requested date range.
pub(crate) fn resolve_range(
    from: Option<&str>,
    to: Option<&str>,
    today: Date,
) -> Result<(Date, Date), AppError> {
    let to = match to {
        Some(raw) => parse_date("to", raw)?,
        None => today,
    };
    let from = match from {
        Some(raw) => parse_date("from", raw)?,
        None => to
            .checked_sub(Duration::days(DEFAULT_HISTORY_DAYS - 1))
            .ok_or_else(|| AppError::bad_request("to is out of range"))?,
    };
    if from > to {
        return Err(AppError::bad_request("from must not be after to"));
    }
    if (to - from).whole_days() + 1 > MAX_HISTORY_DAYS {
        return Err(AppError::bad_request(format!(
            "from..to must span at most {MAX_HISTORY_DAYS} days"
        )));
    }
    Ok((from, to))
}

fn parse_date(field: &str, raw: &str) -> Result<Date, AppError> {
    Date::parse(raw, format_description!("[year]-[month]-[day]")).map_err(|_| {
        AppError::bad_request(format!(
            "{field} must be a date formatted YYYY-MM-DD, got {}",
            short_quote(raw)
        ))
    })
}

pub(crate) fn serialize_date<S: serde::Serializer>(
    date: &Date,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    // Four-digit years only: parse_date never accepts anything else.
    serializer.collect_str(&format_args!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

/// Worked time per UTC day in `from..=to`. Open entries count up to `now`; an
/// entry spanning midnight contributes to each day it touches.
fn daily_totals(rows: &[EntryRow], from: Date, to: Date, now: OffsetDateTime) -> Vec<DayTotal> {
    let range_start = from.midnight().assume_utc();
    let day_count = usize::try_from((to - from).whole_days() + 1).unwrap_or(0);
    let mut totals = vec![Duration::ZERO; day_count];

    for row in rows {
        let start = row.clock_in.max(range_start);
        // Clamped so an open entry never counts negative time if clocks disagree.
        let end = row.clock_out.unwrap_or(now).max(row.clock_in);
        let mut cursor = start;
        while cursor < end {
            let offset = (cursor.date() - from).whole_days();
            let Some(slot) = usize::try_from(offset).ok().and_then(|i| totals.get_mut(i)) else {
                break; // past `to`
            };
            let next_midnight = cursor
                .date()
                .next_day()
                .map_or(end, |d| d.with_time(Time::MIDNIGHT).assume_utc());
            let piece_end = end.min(next_midnight);
            *slot += piece_end - cursor;
            cursor = piece_end;
        }
    }

    let mut days = Vec::with_capacity(day_count);
    let mut date = from;
    for total in totals {
        days.push(DayTotal {
            date,
            worked_seconds: total.whole_seconds(),
        });
        match date.next_day() {
            Some(next) => date = next,
            None => break,
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn row(clock_in: OffsetDateTime, clock_out: Option<OffsetDateTime>) -> EntryRow {
        EntryRow {
            id: 1,
            user_id: 1,
            clock_in,
            clock_out,
        }
    }

    #[test]
    fn splits_across_midnight_and_counts_open_entries_to_now() {
        let rows = [
            row(
                datetime!(2024-03-01 22:00 UTC),
                Some(datetime!(2024-03-02 01:30 UTC)),
            ),
            row(
                datetime!(2024-03-02 09:00 UTC),
                Some(datetime!(2024-03-02 09:00:10.9 UTC)),
            ),
            row(datetime!(2024-03-03 23:00 UTC), None),
        ];
        let now = datetime!(2024-03-04 00:15 UTC);
        let days = daily_totals(&rows, date!(2024 - 03 - 01), date!(2024 - 03 - 05), now);
        let secs: Vec<i64> = days.iter().map(|d| d.worked_seconds).collect();
        assert_eq!(secs, [7200, 5400 + 10, 3600, 900, 0]);
        assert_eq!(days[0].date, date!(2024 - 03 - 01));
        assert_eq!(days[4].date, date!(2024 - 03 - 05));
    }

    #[test]
    fn clips_entries_to_the_range() {
        let rows = [row(
            datetime!(2024-02-28 12:00 UTC),
            Some(datetime!(2024-03-02 12:00 UTC)),
        )];
        let days = daily_totals(
            &rows,
            date!(2024 - 02 - 29),
            date!(2024 - 03 - 01),
            datetime!(2024-06-01 0:00 UTC),
        );
        let secs: Vec<i64> = days.iter().map(|d| d.worked_seconds).collect();
        assert_eq!(secs, [86_400, 86_400]);
    }

    #[test]
    fn range_defaults_and_limits() {
        let today = date!(2024 - 03 - 31);
        assert_eq!(
            resolve_range(None, None, today).unwrap(),
            (date!(2024 - 03 - 02), today)
        );
        assert_eq!(
            resolve_range(Some("2023-04-01"), Some("2024-03-31"), today).unwrap(),
            (date!(2023 - 04 - 01), today)
        );
        assert!(resolve_range(Some("2023-03-31"), Some("2024-03-31"), today).is_err());
        assert!(resolve_range(Some("2024-04-01"), None, today).is_err());
        assert!(resolve_range(Some("2024-3-1"), None, today).is_err());
        assert!(resolve_range(None, Some("2024-02-30"), today).is_err());
    }
}
