//! Prepared statements: the ADBC driver prepares every statement, so creating one plans it
//! once for its schemas, binding keeps parameter rows, and executing re-plans with them.

use crate::flight::statements::PROTOCOL;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use streampulse_engine::{Error, Planned, Result, StatementKind};

use super::StreamPulseFlightSql;
use super::metadata::client_schema;
use super::statements::{authorize, check_owner, count_schema_for, parameter_schema, read_param_rows};
use super::tickets::HANDLE_TTL;
use crate::auth::Principal;

/// One prepared statement.
pub struct PreparedStatement {
    /// Its text.
    pub sql: String,
    /// Who prepared it.
    pub user: String,
    /// What kind of statement it is.
    pub kind: StatementKind,
    /// The schema of its rows.
    pub dataset_schema: SchemaRef,
    /// The schema of its parameters.
    pub parameter_schema: SchemaRef,
    /// Bound parameter rows (one row per execution).
    pub params: Option<Vec<Vec<ScalarValue>>>,
    touched: Instant,
}

/// The open prepared statements, by handle.
#[derive(Default)]
pub struct PreparedStatements {
    map: Mutex<HashMap<String, PreparedStatement>>,
}

impl PreparedStatements {
    /// Run `f` on the statement behind `handle`, if `principal` owns it.
    pub fn with<R>(
        &self,
        principal: &Principal,
        handle: &[u8],
        f: impl FnOnce(&mut PreparedStatement) -> Result<R>,
    ) -> Result<R> {
        let key = String::from_utf8_lossy(handle).to_string();
        let mut map = self.map.lock().map_err(|_| Error::internal("prepared statement table poisoned"))?;
        let stmt = map.get_mut(&key).ok_or_else(|| Error::NotFound {
            kind: "prepared statement",
            name: format!("{key} (unknown or closed)"),
        })?;
        check_owner(principal, &stmt.user)?;
        stmt.touched = Instant::now();
        f(stmt)
    }

    fn insert(&self, handle: String, statement: PreparedStatement) -> Result<()> {
        let mut map = self.map.lock().map_err(|_| Error::internal("prepared statement table poisoned"))?;
        map.retain(|_, p| p.touched.elapsed() < HANDLE_TTL);
        map.insert(handle, statement);
        Ok(())
    }

    /// Forget a statement.
    pub fn close(&self, handle: &[u8]) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&*String::from_utf8_lossy(handle));
        }
    }
}

impl StreamPulseFlightSql {
    /// Plan a statement for its schemas and keep it under a new handle.
    pub(crate) async fn create_prepared(
        &self,
        principal: Principal,
        query: ActionCreatePreparedStatementRequest,
    ) -> Result<ActionCreatePreparedStatementResult> {
        if query.transaction_id.is_some() {
            return Err(Error::not_supported("transactions are not supported"));
        }
        let session = self.engine.session().for_user(&principal.user, PROTOCOL);
        let planned = self.plan_authorized(&principal, &session, &query.query).await?;
        let kind = planned.kind();
        let (dataset_schema, parameter_schema) = match &planned {
            Planned::Query(plan) => {
                let params = parameter_schema(plan)?;
                let dataset = if params.fields().is_empty() {
                    client_schema(&session.physical_plan(plan.clone()).await?.schema())
                } else {
                    client_schema(plan.schema().as_arrow())
                };
                (dataset, params)
            }
            Planned::Dml(plan) => (count_schema_for(kind), parameter_schema(plan)?),
            _ => (count_schema_for(kind), std::sync::Arc::new(Schema::empty())),
        };
        let handle = uuid::Uuid::new_v4().to_string();
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: Bytes::from(handle.clone()),
            dataset_schema: ipc_schema(&dataset_schema)?,
            parameter_schema: ipc_schema(&parameter_schema)?,
        };
        let statement = PreparedStatement {
            sql: query.query,
            user: principal.user,
            kind,
            dataset_schema,
            parameter_schema,
            params: None,
            touched: Instant::now(),
        };
        self.prepared.insert(handle, statement)?;
        Ok(result)
    }

    /// Bind parameter rows to a prepared query.
    pub(crate) async fn bind_prepared(
        &self,
        principal: &Principal,
        handle: &[u8],
        stream: PeekableFlightDataStream,
    ) -> Result<()> {
        let rows = read_param_rows(stream).await?;
        self.prepared.with(principal, handle, |p| {
            if let Some(rows) = &rows
                && let Some(bad) = rows.iter().find(|r| r.len() != p.parameter_schema.fields().len())
            {
                return Err(Error::invalid(format!(
                    "statement takes {} parameters, {} were bound",
                    p.parameter_schema.fields().len(),
                    bad.len()
                )));
            }
            p.params = rows;
            Ok(())
        })
    }

    /// Execute a prepared DDL/DML statement with the rows sent now or bound before.
    pub(crate) async fn update_prepared(
        &self,
        principal: &Principal,
        handle: &[u8],
        stream: PeekableFlightDataStream,
    ) -> Result<i64> {
        let sent = read_param_rows(stream).await?;
        let (sql, kind, stored) =
            self.prepared.with(principal, handle, |p| Ok((p.sql.clone(), p.kind, p.params.clone())))?;
        if kind == StatementKind::Query {
            return Err(Error::invalid("this statement returns rows: execute it as a query"));
        }
        let session = self.engine.session().for_user(&principal.user, PROTOCOL);
        let planned = self.engine.plan_sql(&session, &sql).await?;
        authorize(principal, &planned)?;
        let count = self.execute_command(principal, &session, &sql, planned, sent.or(stored)).await?;
        Ok(count.map_or(0, |c| c as i64))
    }
}

/// A schema as Flight's IPC bytes.
fn ipc_schema(schema: &Schema) -> Result<Bytes> {
    let options = arrow::ipc::writer::IpcWriteOptions::default();
    let message: arrow_flight::IpcMessage = arrow_flight::SchemaAsIpc::new(schema, &options).try_into()?;
    Ok(message.0)
}
