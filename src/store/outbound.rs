//! Sandbox mode's record of the outbound calls that would have been made.

use serde::Serialize;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct OutboundCall {
    pub id: i64,
    pub job_id: Option<i64>,
    pub method: String,
    pub url: String,
    pub body: String,
    pub created_at: i64,
}

impl Store {
    pub async fn record_outbound_call(
        &self,
        job_id: Option<i64>,
        method: &str,
        url: &str,
        body: &str,
    ) -> Result<i64, StoreError> {
        let _turn = self.write_turn().await;
        let id = sqlx::query_scalar(
            "INSERT INTO outbound_calls (job_id, method, url, body, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(job_id)
        .bind(method)
        .bind(url)
        .bind(body)
        .bind(self.now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The newest calls first.
    pub async fn list_outbound_calls(&self, limit: i64) -> Result<Vec<OutboundCall>, StoreError> {
        let rows = sqlx::query_as::<_, OutboundCall>(
            "SELECT id, job_id, method, url, body, created_at FROM outbound_calls ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
