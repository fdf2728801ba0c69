//! End-to-end: the real `streampulse` binary driven by arrow-flight's own Rust clients
//! (`FlightSqlServiceClient` for prepared statements with bound parameter batches, the raw
//! `FlightServiceClient` for `PollFlightInfo` and `GetSchema`, which pyarrow cannot send).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightDescriptor, FlightInfo};
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::Channel;

const PASSWORD: &str = "rust-test-pass";

struct Server {
    child: Child,
    uri: String,
    _warehouse: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let warehouse = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_streampulse"))
            .args(["serve", "--listen", "127.0.0.1:0", "--warehouse"])
            .arg(warehouse.path())
            .env("STREAMPULSE_ADMIN_PASSWORD", PASSWORD)
            .env("STREAMPULSE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut uri = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read stdout");
            if let Some(u) = line.split("listening on ").nth(1) {
                uri = Some(u.trim().replace("grpc://", "http://"));
                break;
            }
        }
        Self { child, uri: uri.expect("server printed its address"), _warehouse: warehouse }
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.uri.clone()).expect("uri").connect().await.expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let mut batches: Vec<RecordBatch> =
            client.do_get(ticket).await.expect("do_get").try_collect().await.expect("stream");
        out.append(&mut batches);
    }
    out
}

#[tokio::test]
async fn prepared_statements_poll_and_get_schema() {
    let server = Server::start();
    let channel = server.channel().await;
    let mut client = FlightSqlServiceClient::new(channel.clone());
    client.handshake("admin", PASSWORD).await.expect("login");

    assert_eq!(client.execute_update("CREATE TABLE t (a BIGINT, b VARCHAR)".into(), None).await.expect("create"), 0);

    // Parameters are reported in numeric order with the types the statement implies.
    let mut insert = client.prepare("INSERT INTO t VALUES ($1, $2)".into(), None).await.expect("prepare insert");
    let params = insert.parameter_schema().expect("parameter schema").clone();
    let names: Vec<_> = params.fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["$1", "$2"]);
    assert_eq!(params.field(0).data_type(), &DataType::Int64);
    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true), Field::new("$2", DataType::Utf8, true)])),
        vec![Arc::new(Int64Array::from(vec![1, 2, 3])), Arc::new(StringArray::from(vec!["x", "y", "z"]))],
    )
    .expect("batch");
    insert.set_parameters(rows).expect("bind");
    assert_eq!(insert.execute_update().await.expect("insert"), 3);
    insert.close().await.expect("close");

    let mut query =
        client.prepare("SELECT b FROM t WHERE a > $1 ORDER BY a".into(), None).await.expect("prepare query");
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![1]))],
    )
    .expect("batch");
    query.set_parameters(one).expect("bind");
    let info = query.execute().await.expect("execute");
    let batches = fetch(&mut client, info).await;
    let values: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let col = b.column(0).as_any().downcast_ref::<StringArray>().expect("utf8").clone();
            (0..col.len()).map(move |i| col.value(i).to_string())
        })
        .collect();
    assert_eq!(values, ["y", "z"]);

    // PollFlightInfo: complete at once, with the same FlightInfo a GetFlightInfo gives.
    let token = client.token().expect("token").clone();
    let mut raw = FlightServiceClient::new(channel);
    let descriptor = FlightDescriptor::new_cmd(
        CommandStatementQuery { query: "SELECT a, b FROM t ORDER BY a".into(), transaction_id: None }
            .as_any()
            .encode_to_vec(),
    );
    let mut request = tonic::Request::new(descriptor.clone());
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let poll = raw.poll_flight_info(request).await.expect("poll").into_inner();
    assert_eq!(poll.progress, Some(1.0));
    assert!(poll.flight_descriptor.is_none());
    let info = poll.info.expect("info");
    let announced = Schema::try_from(info.clone()).expect("schema");
    let batches = fetch(&mut client, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    assert_eq!(batches[0].schema().as_ref(), &announced);

    // GetSchema answers without running anything.
    let mut request = tonic::Request::new(descriptor);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let schema_result = raw.get_schema(request).await.expect("get_schema").into_inner();
    let schema = Schema::try_from(&schema_result).expect("decode schema");
    assert_eq!(schema, announced);
    assert_eq!(schema.field(1).data_type(), &DataType::Utf8);

    // Unknown tables and bad SQL carry the engine's message and the right code.
    let err = client.execute("SELECT * FROM missing_table".into(), None).await.expect_err("missing table");
    assert!(err.to_string().contains("missing_table"), "{err}");
    let err = client.execute_update("CREATE TABLE t (a INT)".into(), None).await.expect_err("exists");
    assert!(err.to_string().contains("already exists"), "{err}");
}
