//! WatchRevocations cannot be used against the broker: streams are capped in total and per
//! connection, thousands of unread streams over a backlog cost the broker little memory and
//! do not slow issuance or an operator's revoke, and a subscriber that falls too far behind
//! is cut off with RESOURCE_EXHAUSTED naming the sequence to resume from, then resumes from it
//! without missing an event.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use taskpass_e2e::*;
use taskpass_proto::v1 as pb;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Lets callers without a certificate follow the stream.
const OPEN_STREAM: &str = "[validation]\nopen_revocation_stream = true\n";

type Val = pb::validation_service_client::ValidationServiceClient<Channel>;

/// A channel from `local` (a loopback address), with the given HTTP/2 windows.
async fn channel(url: &str, ca: &str, local: IpAddr, window: Option<u32>) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
        .unwrap()
        .local_address(Some(local))
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap()
}

/// The broker's resident memory, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// `n` revocations: tasks started and completed, 32 at a time.
async fn revocations(env: &Env, subject: &str, n: usize) {
    let token = env
        .issuer
        .token(subject, taskpass_testkit::ATTESTATION_AUDIENCE, 600);
    let mut left = n;
    while left > 0 {
        let batch = left.min(32);
        left -= batch;
        let mut joins = Vec::new();
        for _ in 0..batch {
            let mut agent = env.agent.clone();
            let token = token.clone();
            joins.push(tokio::spawn(async move {
                let t = agent
                    .start_task(pb::StartTaskRequest {
                        attestation: att_token(token.clone()),
                        purpose: "stream test".into(),
                        audiences: vec![API.into()],
                        scopes: vec!["read".into()],
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .task
                    .unwrap();
                agent
                    .complete_task(pb::CompleteTaskRequest {
                        attestation: att_token(token),
                        task_id: t.task_id,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_unread_streams_are_capped_and_cheap() {
    // Anonymous followers: the open stream is where a flood of them matters most.
    let mut env = Env::start_with(OPEN_STREAM).await.unwrap();
    register(&mut env.admin, &env.issuer, "streamer", "sub-stream")
        .await
        .unwrap();
    revocations(&env, "sub-stream", 300).await;
    let pid = env.broker.pid().unwrap();
    let before = rss(pid);

    // 4,500 streams from twenty addresses (225 each, under the per-address cap), 15 per
    // connection, none of them read.
    let (url, ca) = (env.broker.grpc_url.clone(), env.broker.ca_pem.clone());
    let mut held = Vec::new();
    let mut refused = 0;
    for c in 0..300u32 {
        let local: IpAddr = format!("127.0.0.{}", 2 + c % 20).parse().unwrap();
        let mut val = Val::new(channel(&url, &ca, local, None).await);
        for _ in 0..15 {
            match val
                .watch_revocations(pb::WatchRevocationsRequest {
                    after_sequence: 0,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => held.push(s.into_inner()),
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                    assert!(s.message().contains("limits.watch_subscribers"), "{s:?}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(held.len(), 4096, "limits.watch_subscribers (default 4096)");
    assert_eq!(refused, 4500 - 4096);
    // Let the broker send what it will.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "broker RSS {} MB -> {} MB with {} unread streams",
        before >> 20,
        after >> 20,
        held.len()
    );
    assert!(
        grown < 256 << 20,
        "4,096 unread streams cost the broker {} MB",
        grown >> 20
    );

    // Issuance and an operator's revoke are answered as usual.
    let task = start(&mut env.agent, &env.issuer, "sub-stream", &["read"])
        .await
        .unwrap();
    let t0 = Instant::now();
    for _ in 0..20 {
        issue(&mut env.agent, &env.issuer, "sub-stream", &task.task_id)
            .await
            .unwrap();
    }
    let t1 = Instant::now();
    let r = env
        .admin
        .revoke_task(pb::RevokeTaskRequest {
            task_id: task.task_id.clone(),
            reason: "stream test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revoked_tokens, 20);
    assert!(
        t1 - t0 < Duration::from_secs(5),
        "20 tokens took {:?}",
        t1 - t0
    );
    assert!(
        t1.elapsed() < Duration::from_secs(2),
        "revoke took {:?}",
        t1.elapsed()
    );

    // A place freed is a place for a validator that reads: it sees the revocation.
    drop(held.drain(..15));
    let mut deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        let mut val = Val::new(channel(&url, &ca, "127.0.0.1".parse().unwrap(), None).await);
        match val
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: 0,
                ..Default::default()
            })
            .await
        {
            Ok(s) => break s.into_inner(),
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("the revocation was not streamed")
            .unwrap()
            .unwrap();
        if ev.id == task.task_id {
            break;
        }
    }
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_stream() {
    let env = Env::start_with(
        "[limits]\nagent_requests_per_second = 0\nwatch_subscribers = 64\nwatch_subscribers_per_address = 20\nwatch_subscribers_per_connection = 8\n[validation]\nopen_revocation_stream = true\n",
    )
    .await
    .unwrap();
    let (url, ca) = (env.broker.grpc_url.clone(), env.broker.ca_pem.clone());
    // One client address opens connections until the broker refuses its streams.
    let hog: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..4 {
        let mut val = Val::new(channel(&url, &ca, hog, None).await);
        for _ in 0..8 {
            match val
                .watch_revocations(pb::WatchRevocationsRequest {
                    after_sequence: 0,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => held.push(s.into_inner()),
                Err(s) => refused.push(s),
            }
        }
    }
    assert_eq!(held.len(), 20, "limits.watch_subscribers_per_address");
    assert_eq!(refused.len(), 12);
    for s in &refused {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().contains("limits.watch_subscribers_per_address"),
            "{s:?}"
        );
    }
    // Another client still gets a stream, and the hog gets one back when it lets one go.
    let mut other = Val::new(channel(&url, &ca, "127.0.0.1".parse().unwrap(), None).await);
    let _mine = other
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(held.pop());
    let mut val = Val::new(channel(&url, &ca, hog, None).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match val
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: 0,
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_too_far_behind_is_cut_off_and_resumes_without_a_gap() {
    let mut env = Env::start_with(
        "[limits]\nagent_requests_per_second = 0\nrefusal_audit_interval_seconds = 1\nwatch_lag_events = 32\n[validation]\nopen_revocation_stream = true\n",
    )
    .await
    .unwrap();
    register(&mut env.admin, &env.issuer, "laggard", "sub-lag")
        .await
        .unwrap();
    let (url, ca) = (env.broker.grpc_url.clone(), env.broker.ca_pem.clone());
    // A tiny window: the broker can send only a few events before the client must read.
    let mut val = Val::new(channel(&url, &ca, "127.0.0.1".parse().unwrap(), Some(2048)).await);
    let mut stream = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    revocations(&env, "sub-lag", 200).await;
    // Not read for a while: the broker sees a subscriber that does not read, not one that
    // reads through a burst (which would re-read the log instead).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Read now: some events, then the cut-off naming where to resume.
    let mut seen = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream neither sent nor ended")
        {
            Ok(Some(ev)) => seen.push(ev.sequence),
            Ok(None) => panic!("the stream ended without a status after {seen:?}"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        seen.len() < 200,
        "it was cut off before the end: {}",
        seen.len()
    );
    let resume: u64 = status
        .message()
        .rsplit("resume from sequence ")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{status:?}"));
    assert_eq!(Some(&resume), seen.last().or(Some(&0)), "{status:?}");
    assert!(
        seen.iter().copied().eq(1..=resume),
        "in order, no gap: {seen:?}"
    );

    // Resuming from the cursor misses nothing.
    let mut val = Val::new(channel(&url, &ca, "127.0.0.1".parse().unwrap(), None).await);
    let mut stream = val
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: resume,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = resume + 1;
    while next <= 200 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.sequence, next);
        next += 1;
    }
}
