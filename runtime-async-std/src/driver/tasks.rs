//! The tasks around the actor: one reader and one writer per connection, one
//! accept loop per listener, one connect attempt per `Connect`, a receive and a
//! send loop per UDP socket. They talk to the actor only through channels.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError};
use ferry_core::io::OwnedInput;
use ferry_core::{ConnId, ListenerId, SocketId};
use tracing::{debug, warn};

use super::{READ_BUFFER, RuntimeIds};
use crate::race::{Either, race};
use crate::rt::{self, ReadExt, TcpListener, TcpStream, WriteExt};

/// What a task tells the actor.
pub(crate) enum Msg {
    /// An input for the machine, owned (the machine's `Input` borrows).
    Input(OwnedInput),
    /// Fed as `Input::Accepted`; the actor keeps `io` for the new connection.
    Accepted {
        listener: ListenerId,
        conn: ConnId,
        peer: SocketAddr,
        io: ConnIo,
    },
    /// The writer shut the write direction down (after `Out::Shutdown`).
    WriteClosed { conn: ConnId },
}

/// What the actor hands a writer.
#[derive(Debug)]
pub(crate) enum Out {
    /// Bytes to write, in order.
    Data(Vec<u8>),
    /// Shut the write direction down once everything before is written.
    Shutdown,
}

impl From<OwnedInput> for Msg {
    fn from(input: OwnedInput) -> Self {
        Msg::Input(input)
    }
}

/// Orders from the actor to a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Pause,
    Resume,
    /// The actor took enough of what was read: read on (see [`READ_AHEAD`]).
    Credit,
}

/// Bytes a reader may have delivered that the actor has not handled yet. With it,
/// what arrives after a `PauseRead` is bounded by `READ_AHEAD + READ_BUFFER`,
/// however full the shared inbox is.
pub(crate) const READ_AHEAD: usize = 2 * READ_BUFFER;

/// The actor's ends of a connection. Dropping them closes the connection.
pub(crate) struct ConnIo {
    /// Bytes to write, in order, and the shutdown of the write direction.
    pub(crate) writer: Sender<Out>,
    /// Pause, resume, credit.
    pub(crate) reader: Sender<Control>,
    /// Bytes delivered by the reader and not yet handled by the actor.
    pub(crate) ahead: Arc<AtomicUsize>,
}

impl ConnIo {
    /// The actor handled `n` bytes the reader delivered.
    pub(crate) fn handled(&self, n: usize) {
        let before = self.ahead.fetch_sub(n, Ordering::AcqRel);
        if before >= READ_AHEAD && before - n < READ_AHEAD {
            let _ = self.reader.try_send(Control::Credit);
        }
    }
}

/// The tasks' ends of a connection.
pub(crate) struct ConnEnds {
    writer: Receiver<Out>,
    reader: Receiver<Control>,
    ahead: Arc<AtomicUsize>,
}

pub(crate) fn conn_channels() -> (ConnIo, ConnEnds) {
    // Unbounded on purpose: the machine bounds what it queues (Flushed), and
    // control orders are at most one per actor decision.
    let (writer, writer_rx) = async_channel::unbounded();
    let (reader, reader_rx) = async_channel::unbounded();
    let ahead = Arc::new(AtomicUsize::new(0));
    (
        ConnIo {
            writer,
            reader,
            ahead: ahead.clone(),
        },
        ConnEnds {
            writer: writer_rx,
            reader: reader_rx,
            ahead,
        },
    )
}

/// Start the reader and the writer of an open connection.
fn start_conn(
    conn: ConnId,
    stream: TcpStream,
    ends: ConnEnds,
    inbox: &Sender<Msg>,
    linger: Duration,
    paused: bool,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%conn, error = %e, "cannot set TCP_NODELAY");
    }
    rt::spawn_detached(read_loop(
        conn,
        stream.clone(),
        ends.reader,
        ends.ahead,
        inbox.clone(),
        paused,
    ));
    rt::spawn_detached(write_loop(conn, stream, ends.writer, inbox.clone(), linger));
}

async fn read_loop(
    conn: ConnId,
    stream: TcpStream,
    control: Receiver<Control>,
    ahead: Arc<AtomicUsize>,
    inbox: Sender<Msg>,
    mut paused: bool,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        while paused || ahead.load(Ordering::Acquire) >= READ_AHEAD {
            match control.recv().await {
                Ok(order) => paused = apply(order, paused),
                Err(_) => return, // the actor closed the connection
            }
        }
        let mut reading = &stream;
        // Control first: a pause takes effect before the next read.
        let read = match race(control.recv(), reading.read(&mut buf)).await {
            Either::Left(Ok(order)) => {
                paused = apply(order, paused);
                continue;
            }
            Either::Left(Err(_)) => return,
            Either::Right(read) => read,
        };
        let msg: Msg = match read {
            // The actor decides what a FIN is: `ReadClosed` for a half-closing
            // machine or a pipe, `Closed` otherwise. Nothing more is read.
            Ok(0) => OwnedInput::ReadClosed { conn }.into(),
            Ok(n) => {
                ahead.fetch_add(n, Ordering::AcqRel);
                OwnedInput::Received {
                    conn,
                    data: buf[..n].to_vec(),
                }
                .into()
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(%conn, error = %e, "read failed");
                OwnedInput::Closed { conn }.into()
            }
        };
        let end = matches!(
            msg,
            Msg::Input(OwnedInput::Closed { .. } | OwnedInput::ReadClosed { .. })
        );
        if inbox.send(msg).await.is_err() || end {
            return;
        }
    }
}

fn apply(order: Control, paused: bool) -> bool {
    match order {
        Control::Pause => true,
        Control::Resume => false,
        Control::Credit => paused,
    }
}

/// What woke the writer.
enum Step {
    More(Out),
    ActorClosed,
    Wrote(io::Result<usize>),
    LingerOver,
}

/// Slices in one vectored write.
const MAX_SLICES: usize = 16;

/// The writer's state besides its queue: whether a shutdown is asked for or done.
#[derive(Default)]
struct WriteEnd {
    shutdown: bool,
    shut: bool,
}

impl WriteEnd {
    fn take(&mut self, conn: ConnId, out: Out, queue: &mut VecDeque<Vec<u8>>) {
        match out {
            Out::Data(data) if self.shutdown => {
                debug!(%conn, len = data.len(), "send after shutdown dropped");
            }
            Out::Data(data) => queue.push_back(data),
            Out::Shutdown => self.shutdown = true,
        }
    }
}

async fn write_loop(
    conn: ConnId,
    stream: TcpStream,
    queue_rx: Receiver<Out>,
    inbox: Sender<Msg>,
    linger: Duration,
) {
    let mut queue: VecDeque<Vec<u8>> = VecDeque::new();
    let mut end = WriteEnd::default();
    // Bytes of `queue.front()` already written.
    let mut offset = 0;
    // Set once the actor closed the connection: write what is queued until then.
    let mut linger_until: Option<Instant> = None;
    loop {
        if linger_until.is_none() {
            loop {
                match queue_rx.try_recv() {
                    Ok(out) => end.take(conn, out, &mut queue),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        linger_until = Some(Instant::now() + linger);
                        break;
                    }
                }
            }
        }
        if queue.is_empty() {
            if end.shutdown && !end.shut {
                // Everything before the `Shutdown` is written: FIN.
                end.shut = true;
                if let Err(e) = stream.shutdown(Shutdown::Write) {
                    debug!(%conn, error = %e, "shutdown failed");
                }
                if linger_until.is_none() && inbox.send(Msg::WriteClosed { conn }).await.is_err() {
                    break;
                }
            }
            if linger_until.is_some() {
                break;
            }
            match queue_rx.recv().await {
                Ok(out) => end.take(conn, out, &mut queue),
                Err(_) => linger_until = Some(Instant::now() + linger),
            }
            continue;
        }
        let step = {
            let mut slices: [IoSlice<'_>; MAX_SLICES] = std::array::from_fn(|_| IoSlice::new(&[]));
            let mut count = 0;
            for (i, data) in queue.iter().take(MAX_SLICES).enumerate() {
                let skip = if i == 0 { offset } else { 0 };
                slices[count] = IoSlice::new(&data[skip..]);
                count += 1;
            }
            let mut writing = &stream;
            let write = writing.write_vectored(&slices[..count]);
            match linger_until {
                Some(deadline) => match rt::timeout_at(deadline, write).await {
                    Some(wrote) => Step::Wrote(wrote),
                    None => Step::LingerOver,
                },
                // Keep taking new data while the socket is full, so a close is seen.
                // The write goes first, so a busy producer cannot starve it.
                None => match race(write, queue_rx.recv()).await {
                    Either::Left(wrote) => Step::Wrote(wrote),
                    Either::Right(Ok(data)) => Step::More(data),
                    Either::Right(Err(_)) => Step::ActorClosed,
                },
            }
        };
        match step {
            Step::More(out) => end.take(conn, out, &mut queue),
            Step::ActorClosed => linger_until = Some(Instant::now() + linger),
            Step::LingerOver => {
                debug!(%conn, "closed with bytes unwritten after the linger time");
                break;
            }
            Step::Wrote(Ok(0)) => {
                report_failure(conn, linger_until, &inbox, "socket took no bytes").await;
                break;
            }
            Step::Wrote(Ok(n)) => {
                advance(&mut queue, &mut offset, n);
                if linger_until.is_none()
                    && inbox
                        .send(OwnedInput::Flushed { conn, bytes: n }.into())
                        .await
                        .is_err()
                {
                    break;
                }
            }
            Step::Wrote(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Step::Wrote(Err(e)) => {
                report_failure(conn, linger_until, &inbox, &e.to_string()).await;
                break;
            }
        }
    }
    // Also wakes a reader still waiting on the socket.
    let _ = stream.shutdown(Shutdown::Both);
}

/// Drop `n` written bytes from the front of the queue.
fn advance(queue: &mut VecDeque<Vec<u8>>, offset: &mut usize, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front() else {
            return;
        };
        let left = front.len() - *offset;
        if n < left {
            *offset += n;
            return;
        }
        n -= left;
        *offset = 0;
        queue.pop_front();
    }
    // A zero-length Send may sit at the front; it is written by definition.
    while queue.front().is_some_and(|f| f.len() == *offset) {
        queue.pop_front();
        *offset = 0;
    }
}

async fn report_failure(
    conn: ConnId,
    linger_until: Option<Instant>,
    inbox: &Sender<Msg>,
    error: &str,
) {
    debug!(%conn, %error, "write failed");
    if linger_until.is_none() {
        let _ = inbox.send(OwnedInput::Closed { conn }.into()).await;
    }
}

/// Bind a listener for `Action::Listen`, then accept on it.
pub(crate) async fn listen(
    listener: ListenerId,
    addr: SocketAddr,
    inbox: Sender<Msg>,
    stop: Receiver<()>,
    ids: Arc<RuntimeIds>,
    linger: Duration,
) {
    let bound = match race(stop.recv(), rt::bind_tcp(addr)).await {
        Either::Left(_) => return, // CloseListener before it was bound
        Either::Right(bound) => bound,
    };
    let socket = match bound.and_then(|s| s.local_addr().map(|local| (s, local))) {
        Ok((socket, local)) => {
            if inbox
                .send(OwnedInput::Listening { listener, local }.into())
                .await
                .is_err()
            {
                return;
            }
            socket
        }
        Err(e) => {
            let _ = inbox
                .send(
                    OwnedInput::ListenFailed {
                        listener,
                        error: e.to_string(),
                    }
                    .into(),
                )
                .await;
            return;
        }
    };
    accept_loop(listener, socket, inbox, stop, ids, linger, None).await;
}

/// Accept until `stop` closes or the listener fails.
pub(crate) async fn accept_loop(
    listener: ListenerId,
    socket: TcpListener,
    inbox: Sender<Msg>,
    stop: Receiver<()>,
    ids: Arc<RuntimeIds>,
    linger: Duration,
    failure: Option<Sender<io::Error>>,
) {
    loop {
        let accepted = match race(stop.recv(), socket.accept()).await {
            Either::Left(_) => return,
            Either::Right(accepted) => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let conn = ConnId(ids.next());
                let (io, ends) = conn_channels();
                // Accepted first: the reader's first Received must come after it.
                let accepted = Msg::Accepted {
                    listener,
                    conn,
                    peer,
                    io,
                };
                if inbox.send(accepted).await.is_err() {
                    return;
                }
                start_conn(conn, stream, ends, &inbox, linger, false);
            }
            // Failures of one incoming connection, not of the listener.
            Err(e) if is_per_connection(&e) => {
                debug!(%listener, error = %e, "accept failed for one connection");
            }
            Err(e) if is_exhaustion(&e) => {
                warn!(%listener, error = %e, "accept: out of resources; retrying in 100 ms");
                if let Either::Left(_) =
                    race(stop.recv(), rt::sleep(Duration::from_millis(100))).await
                {
                    return;
                }
            }
            Err(e) => {
                warn!(%listener, error = %e, "listener failed");
                let error = e.to_string();
                if let Some(failure) = failure {
                    let _ = failure.try_send(e);
                }
                let _ = inbox
                    .send(OwnedInput::ListenFailed { listener, error }.into())
                    .await;
                return;
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::Interrupted
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
    )
}

/// EMFILE, ENFILE (the same numbers on Linux and the BSDs), ENOMEM: wait, retry.
fn is_exhaustion(e: &io::Error) -> bool {
    e.kind() == ErrorKind::OutOfMemory || matches!(e.raw_os_error(), Some(23 | 24))
}

/// Carry out `Action::Connect`; the actor's `ConnIo` was made with `ends`.
pub(crate) async fn connect(
    conn: ConnId,
    addr: SocketAddr,
    ends: ConnEnds,
    inbox: Sender<Msg>,
    linger: Duration,
) {
    let mut paused = false;
    let mut connecting = std::pin::pin!(rt::connect(addr));
    let connected = loop {
        match race(ends.reader.recv(), connecting.as_mut()).await {
            Either::Left(Ok(order)) => paused = apply(order, paused),
            Either::Left(Err(_)) => return, // closed before connected
            Either::Right(connected) => break connected,
        }
    };
    let opened = connected.and_then(|s| s.local_addr().map(|local| (s, local)));
    match opened {
        Ok((stream, local)) => {
            if inbox
                .send(OwnedInput::Connected { conn, local }.into())
                .await
                .is_err()
            {
                return;
            }
            start_conn(conn, stream, ends, &inbox, linger, paused);
        }
        Err(e) => {
            let _ = inbox
                .send(
                    OwnedInput::ConnectFailed {
                        conn,
                        error: e.to_string(),
                    }
                    .into(),
                )
                .await;
        }
    }
}

/// Carry out `Action::BindUdp`: bind, then receive until `stop` closes, sending
/// what `outgoing` carries until it closes.
pub(crate) async fn udp(
    socket: SocketId,
    addr: SocketAddr,
    inbox: Sender<Msg>,
    outgoing: Receiver<(SocketAddr, Vec<u8>)>,
    stop: Receiver<()>,
) {
    let bound = match race(stop.recv(), rt::bind_udp(addr)).await {
        Either::Left(_) => return,
        Either::Right(bound) => bound,
    };
    let udp = match bound.and_then(|u| u.local_addr().map(|local| (u, local))) {
        Ok((udp, local)) => {
            if inbox
                .send(OwnedInput::UdpBound { socket, local }.into())
                .await
                .is_err()
            {
                return;
            }
            Arc::new(udp)
        }
        Err(e) => {
            let _ = inbox
                .send(
                    OwnedInput::UdpBindFailed {
                        socket,
                        error: e.to_string(),
                    }
                    .into(),
                )
                .await;
            return;
        }
    };
    let sending = udp.clone();
    rt::spawn_detached(async move {
        while let Ok((to, data)) = outgoing.recv().await {
            if let Err(e) = sending.send_to(&data, to).await {
                debug!(%socket, %to, error = %e, "datagram not sent");
            }
        }
    });
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let received = match race(stop.recv(), udp.recv_from(&mut buf)).await {
            Either::Left(_) => return,
            Either::Right(received) => received,
        };
        match received {
            Ok((n, from)) => {
                let datagram = OwnedInput::Datagram {
                    socket,
                    from,
                    data: buf[..n].to_vec(),
                }
                .into();
                if inbox.send(datagram).await.is_err() {
                    return;
                }
            }
            // E.g. an ICMP error for an earlier datagram: it concerns that one only.
            Err(e) => {
                debug!(%socket, error = %e, "receive failed");
                rt::yield_now().await;
            }
        }
    }
}
