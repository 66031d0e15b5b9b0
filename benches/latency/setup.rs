//! Setting a peer up: the requester's side (a module of the latency bench).

use super::*;

/// A running responder and the requester's end of its peer. Fields drop in order: the
/// requester's ends close first, then the guard kills and reaps the responder.
pub(crate) struct Session {
    pub(crate) requester: Box<dyn Requester>,
    pub(crate) child: ChildGuard,
}

/// Asks for a pipe of [`BIG_PIPE`] bytes; a refusal (a lower pipe-max-size) is not an error,
/// the pipe keeps its size.
pub(crate) fn enlarge_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on an open fd we own, with a valid command and size.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, BIG_PIPE as libc::c_int) };
}

/// Creates the shared resources of `case`, spawns its responder (to answer `count`
/// requests) and returns the requester's end.
pub(crate) fn start(case: Case, count: u64, responder_cpu: Option<usize>) -> Res<Session> {
    let Case { peer, payload } = case;
    let mut cmd = responder_command(case, count, responder_cpu)?;
    let spawn = |cmd: &mut Command| ChildGuard::spawn(cmd, "latency", "responder", CHILD_DEADLINE);
    match peer {
        Peer::Bare | Peer::Futex | Peer::Record | Peer::RecordMoving => {
            let page = SharedPage::create()?;
            pass_fds(&mut cmd, ENV_FDS, &[page.fd.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            let requester: Box<dyn Requester> = match peer {
                Peer::Bare => Box::new(BarePeer { page }),
                Peer::Futex => Box::new(FutexPeer { page }),
                _ => Box::new(RecordPeer::new(page, peer, payload)),
            };
            Ok(Session { requester, child })
        }
        Peer::Pipe => {
            let (ping_rx, ping_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (pong_rx, pong_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            if payload > PIPE_DEFAULT {
                enlarge_pipe(&ping_tx);
                enlarge_pipe(&pong_tx);
            }
            pass_fds(&mut cmd, ENV_FDS, &[ping_rx.as_raw_fd(), pong_tx.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            // Close our copies of the responder's ends, so its death reads as end of file.
            drop((ping_rx, pong_tx));
            let io = IoPeer::new(File::from(pong_rx), File::from(ping_tx), payload);
            Ok(Session { requester: Box::new(io), child })
        }
        Peer::Unix => {
            let (mine, theirs) = UnixStream::pair()?;
            pass_fds(&mut cmd, ENV_FDS, &[theirs.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            drop(theirs);
            Ok(Session { requester: Box::new(IoPeer::new(mine.try_clone()?, mine, payload)), child })
        }
        Peer::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
            let child = spawn(&mut cmd)?;
            let stream = accept_within(&listener, WAIT_TIMEOUT, "responder")?;
            stream.set_nodelay(true)?;
            Ok(Session { requester: Box::new(IoPeer::new(stream.try_clone()?, stream, payload)), child })
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::create_memfd(&arena_config(payload)?, "latency")?);
            // The requester compares answers in place: it needs no buffer.
            let requester = ShmPeer::open(arena.clone(), 0, 1, policy, 0)?;
            arena.inherit_fd_into(&mut cmd)?;
            let child = spawn(&mut cmd)?;
            Ok(Session { requester: Box::new(requester), child })
        }
        Peer::NetSpin | Peer::NetPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::create_memfd(&net_arena_config(payload)?, "latency-netstack")?);
            let env = ShuffleEnvironment::new(arena.clone(), REQUESTER_WORKER);
            // Registered before the responder starts, so its gate finds it at once.
            let writer = net_writer(&env, NET_REQUESTS, policy)?;
            arena.inherit_fd_into(&mut cmd)?;
            let child = spawn(&mut cmd)?;
            // Waits (request backoff) until the responder has registered its partition; on
            // an error the guard kills the responder.
            let gate = net_gate(&env, NET_ANSWERS, policy)?;
            Ok(Session { requester: Box::new(NetPeer { writer, gate, payload, _env: env }), child })
        }
    }
}

/// The command that re-executes this binary as the responder of `case`. The responder
/// dies with the requester (PR_SET_PDEATHSIG).
pub(crate) fn responder_command(case: Case, count: u64, cpu: Option<usize>) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ENV_PEER, case.peer.name())
        .env(ENV_COUNT, count.to_string())
        .env(ENV_PAYLOAD, case.payload.to_string())
        .stdin(Stdio::null());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}
