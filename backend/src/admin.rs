//! `timemanager-backend create-admin --email E [--username U]`: the first admin of a
//! server (or a new password for an admin locked out), the password read from stdin so
//! it never appears in argv, in `ps` or in a shell history.

use std::io::BufRead as _;
use std::process::ExitCode;

use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use crate::auth::{Role, password};
use crate::config::MigrateConfig;
use crate::error::{AppError, error_chain};
use crate::users::NewUser;

/// What `create-admin` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created { user_id: i64 },
    Updated { user_id: i64, sessions_ended: u64 },
}

/// Reads the password: the first line of stdin, without its line ending.
pub fn read_password(input: impl std::io::Read) -> Result<String, String> {
    let mut line = String::new();
    std::io::BufReader::new(input)
        .read_line(&mut line)
        .map_err(|err| format!("cannot read the password from stdin: {err}"))?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err("no password on stdin (pipe it in: the first line is the password)".to_owned());
    }
    Ok(password)
}

/// Makes `email` an admin with `password`: a new user if the email is unknown, else the
/// existing user becomes an admin with this password and their sessions end.
pub async fn create_admin(
    conn: &mut PgConnection,
    email: &str,
    username: Option<&str>,
    new_password: &str,
) -> Result<Outcome, AppError> {
    let has_accounts: bool = sqlx::query_scalar("SELECT to_regclass('accounts') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !has_accounts {
        return Err(AppError::Status(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the database has no accounts table yet: run `timemanager-backend migrate` first"
                .to_owned(),
        ));
    }
    let existing: Option<(i64, String)> =
        sqlx::query_as("SELECT id, username FROM users WHERE lower(email) = lower($1)")
            .bind(email.trim())
            .fetch_optional(&mut *conn)
            .await?;
    let username = match (&existing, username) {
        (Some((_, name)), _) => name.clone(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => email.split('@').next().unwrap_or_default().to_owned(),
    };
    password::check_new(new_password, email.trim(), &username).map_err(AppError::unprocessable)?;
    let owned = new_password.to_owned();
    let hash = tokio::task::spawn_blocking(move || password::hash(&owned))
        .await
        .map_err(|err| AppError::Internal(Box::new(err)))?
        .map_err(|err| AppError::Internal(err.to_string().into()))?;
    let mut tx = conn.begin().await?;
    let outcome = match existing {
        Some((user_id, _)) => {
            let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            Outcome::Updated {
                user_id,
                sessions_ended: ended,
            }
        }
        None => {
            let user = NewUser {
                username,
                email: email.to_owned(),
                role: Role::Admin,
                team_id: None,
            }
            .validate()?;
            let user_id: i64 = sqlx::query_scalar(
                "INSERT INTO users (username, email) VALUES ($1, $2) RETURNING id",
            )
            .bind(&user.username)
            .bind(&user.email)
            .fetch_one(&mut *tx)
            .await
            .map_err(|err| match crate::error::unique_violation(&err) {
                Some("users_username_key") => AppError::conflict(format!(
                    "username {:?} is taken: pass another with --username",
                    user.username
                )),
                _ => err.into(),
            })?;
            Outcome::Created { user_id }
        }
    };
    let user_id = match outcome {
        Outcome::Created { user_id } | Outcome::Updated { user_id, .. } => user_id,
    };
    sqlx::query(
        "INSERT INTO accounts (user_id, role, password_hash, must_change_password)
         VALUES ($1, 'admin', $2, false)
         ON CONFLICT (user_id) DO UPDATE
         SET role = 'admin', password_hash = $2, must_change_password = false, updated_at = now()",
    )
    .bind(user_id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The subcommand: exit 0 done, 1 failed, 2 refused (password rules, bad email).
pub async fn create_admin_command(
    config: MigrateConfig,
    email: String,
    username: Option<String>,
    new_password: String,
) -> ExitCode {
    let mut conn = match config.database.connect_options().connect().await {
        Ok(conn) => conn,
        Err(err) => {
            eprintln!(
                "error: cannot connect to {}: {}",
                config.database,
                error_chain(&err)
            );
            return ExitCode::FAILURE;
        }
    };
    let result = create_admin(&mut conn, &email, username.as_deref(), &new_password).await;
    let _ = conn.close().await;
    match result {
        Ok(Outcome::Created { user_id }) => {
            println!("created admin {email} (user {user_id})");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Updated {
            user_id,
            sessions_ended,
        }) => {
            println!(
                "user {user_id} ({email}) is an admin with the new password; {sessions_ended} session(s) ended"
            );
            ExitCode::SUCCESS
        }
        Err(AppError::Internal(err)) => {
            eprintln!("error: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
        Err(err) => {
            let status = err.status();
            let message = match err {
                AppError::BadRequest(m)
                | AppError::NotFound(m)
                | AppError::Conflict(m)
                | AppError::Unprocessable(m)
                | AppError::Status(_, m) => m,
                AppError::Internal(_) => String::new(),
            };
            eprintln!("error: {message}");
            ExitCode::from(if status.is_server_error() { 1 } else { 2 })
        }
    }
}
