//! The `yamux` crate's side of a connection, for tests: a `yamux::Connection`
//! driven by one async-std task, with commands in and inbound streams out.

// Each test file that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::task::Poll;

use async_std::net::TcpStream;
use async_std::task::{self, JoinHandle};
use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt};

pub enum CrateCmd {
    Open(async_channel::Sender<yamux::Stream>),
    Close,
}

/// A running `yamux::Connection`.
pub struct Theirs {
    pub cmds: mpsc::UnboundedSender<CrateCmd>,
    pub inbound: async_channel::Receiver<yamux::Stream>,
    pub task: JoinHandle<Result<(), yamux::ConnectionError>>,
}

impl Theirs {
    pub async fn open(&self) -> yamux::Stream {
        let (tx, rx) = async_channel::bounded(1);
        self.cmds
            .unbounded_send(CrateCmd::Open(tx))
            .expect("the crate's connection is running");
        rx.recv().await.expect("the crate opened a stream")
    }

    pub async fn accept(&self) -> yamux::Stream {
        self.inbound.recv().await.expect("an inbound stream")
    }
}

pub fn theirs(socket: TcpStream, mode: yamux::Mode) -> Theirs {
    let (cmds, mut cmd_rx) = mpsc::unbounded();
    let (inbound_tx, inbound) = async_channel::unbounded();
    let mut conn = yamux::Connection::new(socket, yamux::Config::default(), mode);
    let task = task::spawn(async move {
        let mut waiting: VecDeque<async_channel::Sender<yamux::Stream>> = VecDeque::new();
        let mut closing = false;
        std::future::poll_fn(|cx| {
            loop {
                while let Poll::Ready(Some(cmd)) =
                    futures::StreamExt::poll_next_unpin(&mut cmd_rx, cx)
                {
                    match cmd {
                        CrateCmd::Open(reply) => waiting.push_back(reply),
                        CrateCmd::Close => closing = true,
                    }
                }
                if closing {
                    return conn.poll_close(cx);
                }
                while let Some(reply) = waiting.pop_front() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(stream)) => {
                            let _ = reply.try_send(stream);
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            waiting.push_front(reply);
                            break;
                        }
                    }
                }
                match conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(stream))) => {
                        let _ = inbound_tx.try_send(stream);
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    });
    Theirs {
        cmds,
        inbound,
        task,
    }
}

/// Echo every stream the crate accepts: copy until EOF, then close (FIN).
pub fn crate_echoes(theirs: &Theirs) {
    let inbound = theirs.inbound.clone();
    task::spawn(async move {
        while let Ok(stream) = inbound.recv().await {
            task::spawn(async move {
                let (mut r, mut w) = stream.split();
                futures::io::copy(&mut r, &mut w).await.expect("echo copy");
                w.close().await.expect("echo close");
            });
        }
    });
}
