//! Dashboard users, their sessions and failed sign-ins. Passwords arrive here already
//! hashed (argon2id, in `app::accounts`); session tokens only as SHA-256 digests.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, Tx};
use crate::domain::access::Role;
use crate::domain::state::Persisted;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminUser {
    pub id: i64,
    pub name: String,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
}

/// A live session: its user and its CSRF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSession {
    pub user: AdminUser,
    pub csrf: String,
    pub expires_at: i64,
}

async fn end_sessions_of(tx: &mut Tx, name: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM admin_sessions WHERE user_id IN (SELECT id FROM admin_users WHERE name = $1)")
        .bind(name)
        .execute(tx.write()?)
        .await?;
    Ok(())
}

fn user_from(row: &sqlx::any::AnyRow) -> Result<AdminUser, sqlx::Error> {
    Ok(AdminUser {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::try_from(row.try_get::<String, _>("role")?).map_err(|e| sqlx::Error::Decode(e.into()))?,
        password_hash: row.try_get("password_hash")?,
        disabled: row.try_get::<super::StoredFlag, _>("disabled")?.into(),
        created_at: row.try_get("created_at")?,
    })
}

const USER_COLUMNS: &str = "u.id AS id, u.name AS name, u.role AS role, u.password_hash AS password_hash, \
                            u.disabled AS disabled, u.created_at AS created_at";

impl Store {
    /// Creates a user, or replaces the role and password of one with that name, ending
    /// that user's sessions in the same transaction.
    pub async fn upsert_admin_user(&self, name: &str, role: Role, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin(None).await?;
        sqlx::query(
            "INSERT INTO admin_users (name, role, password_hash, disabled, created_at) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (name) DO UPDATE SET role = $2, password_hash = $3, disabled = 0",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(self.now_ms())
        .execute(tx.write()?)
        .await?;
        end_sessions_of(&mut tx, name).await?;
        tx.commit("").await?;
        Ok(())
    }

    /// Disables a user and ends their sessions, together. False when there is no such user.
    pub async fn disable_admin_user(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin(None).await?;
        let done = sqlx::query("UPDATE admin_users SET disabled = 1 WHERE name = $1")
            .bind(name)
            .execute(tx.write()?)
            .await?;
        end_sessions_of(&mut tx, name).await?;
        tx.commit("").await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn admin_users(&self) -> Result<Vec<AdminUser>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM admin_users u ORDER BY u.name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(user_from).collect::<Result<_, _>>()?)
    }

    pub async fn admin_user(&self, name: &str) -> Result<Option<AdminUser>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM admin_users u WHERE u.name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from).transpose()?)
    }

    /// Starts a session; the token itself never reaches the database.
    pub async fn create_admin_session(
        &self,
        token_hash: &str,
        user_id: i64,
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let now = self.now_ms();
        // Expired sessions go when new ones start.
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO admin_sessions (token_hash, user_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(csrf)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session with this token digest (not expired, its user not disabled).
    pub async fn admin_session(&self, token_hash: &str) -> Result<Option<AdminSession>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, s.csrf AS csrf, s.expires_at AS expires_at FROM admin_sessions s \
             JOIN admin_users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = 0"
        ))
        .bind(token_hash)
        .bind(self.now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(AdminSession {
            user: user_from(&row)?,
            csrf: row.try_get("csrf")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    pub async fn end_admin_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes a failed sign-in for `name` (known or not).
    pub async fn record_login_failure(&self, name: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let now = self.now_ms();
        sqlx::query("DELETE FROM login_failures WHERE at < $1")
            .bind(now - 86_400_000)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO login_failures (name, at) VALUES ($1, $2)")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets `name`'s failed sign-ins (after a successful one).
    pub async fn clear_login_failures(&self, name: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM login_failures WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Failed sign-ins for `name` since `since`.
    pub async fn login_failures_since(&self, name: &str, since: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE name = $1 AND at >= $2")
                .bind(name)
                .bind(since)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
