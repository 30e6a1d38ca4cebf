//! Teams: `GET /teams`, `POST /teams` (admins) and `GET /teams/{id}/totals`, the
//! per-member worked time a team's managers see.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use time::{Date, OffsetDateTime};

use crate::AppState;
use crate::auth::Viewer;
use crate::clock::resolve_range;
use crate::error::{AppError, unique_violation};
use crate::extract::{ApiJson, ApiQuery, short_quote};

const NAME_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Team {
    pub id: i64,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Deserialize)]
pub struct NewTeam {
    pub name: String,
}

/// `GET /teams` → every team for an admin, otherwise the viewer's own team (or none).
pub async fn list_teams(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Json<Vec<Team>>, AppError> {
    let teams = sqlx::query_as::<_, Team>(
        "SELECT id, name, created_at FROM teams WHERE $1 OR id = $2 ORDER BY id",
    )
    .bind(viewer.is_admin())
    .bind(viewer.team_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(teams))
}

/// `POST /teams` (admin) `{"name": ...}` → 201 with the team; 409 for a taken name.
pub async fn create_team(
    State(state): State<AppState>,
    viewer: Viewer,
    ApiJson(new_team): ApiJson<NewTeam>,
) -> Result<(StatusCode, Json<Team>), AppError> {
    viewer.require_admin()?;
    let name = new_team.name.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(AppError::unprocessable(format!(
            "name must be 1 to {NAME_MAX} printable characters, got {}",
            short_quote(name)
        )));
    }
    let result = sqlx::query_as::<_, Team>(
        "INSERT INTO teams (name) VALUES ($1) RETURNING id, name, created_at",
    )
    .bind(name)
    .fetch_one(&state.pool)
    .await;
    match result {
        Ok(team) => Ok((StatusCode::CREATED, Json(team))),
        Err(err) if unique_violation(&err) == Some("teams_name_key") => {
            Err(AppError::conflict("a team with this name exists"))
        }
        Err(err) => Err(err.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct TotalsParams {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub team: Team,
    #[serde(serialize_with = "crate::clock::serialize_date")]
    pub from: Date,
    #[serde(serialize_with = "crate::clock::serialize_date")]
    pub to: Date,
    pub members: Vec<MemberTotal>,
}

#[derive(Debug, Serialize, FromRow)]
pub struct MemberTotal {
    pub user_id: i64,
    pub username: String,
    pub role: String,
    pub clocked_in: bool,
    pub worked_seconds: i64,
}

/// `GET /teams/{id}/totals?from=&to=` → each member's worked seconds in the UTC days
/// `from..=to` (defaults and limits as the history's), open entries counted up to now.
/// For the team's managers and admins; 404 for everyone else.
pub async fn totals(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(raw_id): Path<String>,
    ApiQuery(params): ApiQuery<TotalsParams>,
) -> Result<Json<Totals>, AppError> {
    let id = match raw_id.parse::<i64>() {
        Ok(id) if id > 0 => id,
        _ => {
            return Err(AppError::bad_request(format!(
                "id must be a positive integer, got {}",
                short_quote(&raw_id)
            )));
        }
    };
    let not_found = || AppError::not_found(format!("team {id} not found"));
    if !(viewer.is_admin() || viewer.manages(id)) {
        return Err(not_found());
    }
    let team = sqlx::query_as::<_, Team>("SELECT id, name, created_at FROM teams WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(not_found)?;
    let now = OffsetDateTime::now_utc();
    let (from, to) = resolve_range(params.from.as_deref(), params.to.as_deref(), now.date())?;
    let start = from.midnight().assume_utc();
    let end = to
        .next_day()
        .ok_or_else(|| AppError::bad_request("to is out of range"))?
        .midnight()
        .assume_utc();
    // Each entry clipped to [start, end); an open one runs to now. The FILTER matters:
    // GREATEST ignores NULLs, so a member without entries would count the whole range.
    let members = sqlx::query_as::<_, MemberTotal>(
        "SELECT u.id AS user_id, u.username, a.role,
                bool_or(e.id IS NOT NULL AND e.clock_out IS NULL) AS clocked_in,
                COALESCE(SUM(GREATEST(0, EXTRACT(EPOCH FROM
                    LEAST(COALESCE(e.clock_out, now()), $3) - GREATEST(e.clock_in, $2)
                ))) FILTER (WHERE e.id IS NOT NULL), 0)::bigint AS worked_seconds
         FROM accounts a
         JOIN users u ON u.id = a.user_id
         LEFT JOIN clock_entries e ON e.user_id = u.id
              AND e.clock_in < $3 AND (e.clock_out IS NULL OR e.clock_out > $2)
         WHERE a.team_id = $1
         GROUP BY u.id, u.username, a.role
         ORDER BY u.username",
    )
    .bind(id)
    .bind(start)
    .bind(end)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Totals {
        team,
        from,
        to,
        members,
    }))
}
