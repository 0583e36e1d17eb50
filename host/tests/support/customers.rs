//! Customers ordering from a host without pause, as load for tests that break something
//! mid-run: each keeps placing orders until stopped, and the test learns which orders were
//! placed (answered 200) and what every refused one (503) was told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

/// What the customers were told so far.
#[derive(Debug, Default)]
pub struct Answers {
    /// The ids of orders answered 200.
    pub placed: Vec<String>,
    /// The error of each order answered 503.
    pub refused: Vec<String>,
}

impl Answers {
    /// The refusals of orders cut off in a transaction (see [`is_cut_off`]).
    pub fn cut_off(&self) -> Vec<&String> {
        self.refused
            .iter()
            .filter(|error| is_cut_off(error))
            .collect()
    }
}

/// Whether a 503's `error` came from a transaction the host had begun, cut off by a fault,
/// rather than from a refusal at the door (Kafka unreachable, shutting down, too busy): only
/// such an order may still have reached Kafka.
pub fn is_cut_off(error: &str) -> bool {
    !["Kafka is unreachable", "shutting down", "too many requests"]
        .iter()
        .any(|at_the_door| error.contains(at_the_door))
}

pub struct Customers {
    answers: Arc<Mutex<Answers>>,
    done: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Customers {
    /// `clients` customers, each ordering `count` pizzas at a time from the host at `url`.
    pub fn start(url: &str, clients: usize, count: u32) -> Self {
        let answers: Arc<Mutex<Answers>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (url, answers, done) = (url.to_owned(), answers.clone(), done.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !done.load(Ordering::Relaxed) {
                        let response = client
                            .post(format!("{url}/order/{count}"))
                            .timeout(Duration::from_secs(60))
                            .send()
                            .await
                            .unwrap();
                        let status = response.status().as_u16();
                        let body: serde_json::Value = response.json().await.unwrap();
                        match status {
                            200 => answers
                                .lock()
                                .unwrap()
                                .placed
                                .push(body["order_id"].as_str().unwrap().to_owned()),
                            503 => {
                                answers
                                    .lock()
                                    .unwrap()
                                    .refused
                                    .push(body["error"].as_str().unwrap().to_owned());
                                // Told to try again shortly, as a customer would be: without a
                                // pause, refusals at once would make a busy loop.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            other => panic!("unexpected answer {other}: {body}"),
                        }
                    }
                })
            })
            .collect();
        Self {
            answers,
            done,
            tasks,
        }
    }

    pub fn placed(&self) -> usize {
        self.answers.lock().unwrap().placed.len()
    }

    pub fn refused(&self) -> usize {
        self.answers.lock().unwrap().refused.len()
    }

    /// Waits until `more` orders beyond those placed so far have been placed.
    pub async fn wait_placed(&self, more: usize, limit: Duration) {
        let enough = self.placed() + more;
        wait_for(limit, &format!("{enough} orders placed"), || async {
            (self.placed() >= enough).then_some(())
        })
        .await;
    }

    /// Waits until a refusal beyond those so far has come.
    pub async fn wait_refused(&self, limit: Duration) {
        let more = self.refused() + 1;
        wait_for(limit, "an order refused", || async {
            (self.refused() >= more).then_some(())
        })
        .await;
    }

    /// Stops ordering, lets each customer hear the answer it waits for, and returns them all.
    pub async fn stop(self) -> Answers {
        self.done.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}
