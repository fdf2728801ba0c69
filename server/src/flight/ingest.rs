//! Flight SQL bulk ingest (`CommandStatementIngest`, ADBC's `adbc_ingest`): the uploaded
//! batches are handed to the core's bulk load as they arrive (it stages them on disk).

use crate::flight::statements::PROTOCOL;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{CommandStatementIngest, TableExistsOption, TableNotExistOption};
use datafusion::common::TableReference;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use streampulse_engine::{CATALOG_NAME, Error, LoadMode, Result};
use tracing::info;

use super::StreamPulseFlightSql;
use crate::auth::Principal;

impl StreamPulseFlightSql {
    /// Bulk ingest, recorded in system.queries as `INGEST <mode> INTO <table>` (kind `ingest`).
    pub(crate) async fn ingest(
        &self,
        principal: &Principal,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64> {
        let table = match cmd.schema.as_deref().filter(|s| !s.is_empty()) {
            Some(schema) => format!("{schema}.{}", cmd.table),
            None => cmd.table.clone(),
        };
        let log = self.engine.query_log().start(
            &principal.user,
            PROTOCOL,
            &format!("INGEST {} INTO {table}", load_mode(&cmd).as_str()),
        );
        log.planned("ingest");
        let session = self.engine.session().for_user(&principal.user, PROTOCOL);
        let result = self.ingest_into(principal, &session, &log, cmd, stream).await;
        match &result {
            Ok(rows) => log.finish(Some(*rows as u64), session.stats(), None),
            Err(e) => log.finish(None, session.stats(), Some(super::statements::error_of(e))),
        }
        result
    }

    async fn ingest_into(
        &self,
        principal: &Principal,
        session: &streampulse_engine::Session,
        log: &streampulse_engine::QueryHandle,
        cmd: CommandStatementIngest,
        stream: PeekableFlightDataStream,
    ) -> Result<i64> {
        principal.require_admin("ingest data")?;
        if cmd.temporary {
            return Err(Error::not_supported("temporary tables are not supported"));
        }
        if cmd.transaction_id.is_some() {
            return Err(Error::not_supported("transactions are not supported"));
        }
        if let Some(catalog) = cmd.catalog.as_deref().filter(|c| !c.is_empty() && *c != CATALOG_NAME) {
            return Err(Error::NotFound { kind: "catalog", name: catalog.to_string() });
        }
        let target = match cmd.schema.as_deref().filter(|s| !s.is_empty()) {
            Some(schema) => TableReference::partial(schema, cmd.table.as_str()),
            None => TableReference::bare(cmd.table.as_str()),
        };
        let mode = load_mode(&cmd);
        let waiting = std::time::Instant::now();
        let _permit = self.admission.admit().await?;
        log.admitted(waiting.elapsed());
        // The schema comes with the first message, so read that one before building the stream.
        let mut batches = FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from));
        let bad_data = |e: FlightError| DataFusionError::Execution(format!("bad ingest data: {e}"));
        let first = batches.next().await.transpose().map_err(bad_data)?;
        let schema = match (batches.schema(), &first) {
            (Some(s), _) => s.clone(),
            (None, Some(b)) => b.schema(),
            (None, None) => return Err(Error::invalid("ingest sent no schema")),
        };
        let rest = futures::stream::iter(first.map(Ok)).chain(batches.map(move |b| b.map_err(bad_data)));
        let input = Box::pin(RecordBatchStreamAdapter::new(schema, rest));
        let rows = self.engine.bulk_load(session, &target, input, mode).await?;
        info!(user = %principal.user, table = %target, rows, mode = mode.as_str(), "ingest done");
        Ok(rows as i64)
    }
}

fn load_mode(cmd: &CommandStatementIngest) -> LoadMode {
    let (create, exists) = match &cmd.table_definition_options {
        Some(o) => (
            o.if_not_exist != TableNotExistOption::Fail as i32,
            TableExistsOption::try_from(o.if_exists).unwrap_or(TableExistsOption::Fail),
        ),
        None => (true, TableExistsOption::Fail),
    };
    match (create, exists) {
        (_, TableExistsOption::Replace) => LoadMode::Replace,
        (true, TableExistsOption::Append) => LoadMode::CreateAppend,
        (false, TableExistsOption::Append) => LoadMode::Append,
        _ => LoadMode::Create,
    }
}
