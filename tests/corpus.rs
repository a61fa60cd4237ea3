//! Replays every capture of tests/corpus/zeek-dns (real traces from Zeek's test suite) with
//! tcpreplay into a veth the sensor is attached to, and compares the sensor's records with
//! tshark's dissection of the same frames: every in-scope query tshark shows is reported with
//! the same client, name and type, every in-scope response with the same client, response code
//! and answer addresses, nothing is invented, and every other packet is accounted for by a
//! kernel counter. Needs root, tcpreplay and tshark; fails without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use common::tshark::{
    assert_lines_match_tshark, corpus, expected_queries, expected_responses, live_replay,
};
use sensor_common::Counter;

#[test]
fn corpus_replay_matches_tshark() {
    let files = corpus();
    let expected = expected_queries(&files);
    let expected_responses = expected_responses(&files);
    let expected_total: usize = expected.values().sum();
    assert!(
        expected_total >= 25,
        "the corpus holds in-scope queries: {expected:#?}"
    );
    let (lines, counters, frames) = live_replay(&files);

    assert_eq!(
        counters["packets"], frames as u64,
        "every replayed frame reached XDP, nothing else did: {counters}"
    );
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_outcome())
        .map(|c| counters[c.name()].as_u64().unwrap())
        .sum();
    // And every further DNS message of a TCP segment by one more (`tcp_pipelined`).
    assert_eq!(
        outcomes,
        frames as u64 + counters["tcp_pipelined"].as_u64().unwrap(),
        "every packet accounted for by one counter: {counters}"
    );
    assert_eq!(counters["events"], expected_total as u64, "{counters}");
    let responses_total: usize = expected_responses.values().sum();
    assert!(responses_total >= 20, "the corpus holds in-scope responses");
    assert_eq!(
        counters["response_events"], responses_total as u64,
        "{counters}"
    );

    assert_lines_match_tshark(&lines, &expected, &expected_responses);
}
