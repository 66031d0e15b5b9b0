//! The responder process (a module of the latency bench).

use super::*;

pub(crate) fn responder_main(peer: &str) -> Res<()> {
    let peer = Peer::from_name(peer).ok_or_else(|| format!("unknown peer {peer:?}"))?;
    let count: u64 = env_var(ENV_COUNT)?.parse()?;
    let payload: usize = env_var(ENV_PAYLOAD)?.parse()?;
    if peer.carries_payload() != (payload >= 8 && payload % 8 == 0) {
        return Err(format!("{} with a payload of {payload} bytes", peer.name()).into());
    }
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let mut responder = open_responder(peer, payload)?;
    for seq in 1..=count {
        responder.serve(seq)?;
    }
    Ok(())
}

pub(crate) fn open_responder(peer: Peer, payload: usize) -> Res<Box<dyn Responder>> {
    Ok(match peer {
        Peer::Bare => Box::new(BarePeer { page: SharedPage::inherited()? }),
        Peer::Futex => Box::new(FutexPeer { page: SharedPage::inherited()? }),
        Peer::Record | Peer::RecordMoving => Box::new(RecordPeer::new(SharedPage::inherited()?, peer, payload)),
        Peer::Pipe => {
            let [rx, tx] = inherited_fds::<2>()?;
            Box::new(IoPeer::new(File::from(rx), File::from(tx), payload))
        }
        Peer::Unix => {
            let [fd] = inherited_fds::<1>()?;
            let stream = UnixStream::from(fd);
            Box::new(IoPeer::new(stream.try_clone()?, stream, payload))
        }
        Peer::Tcp => {
            let port: u16 = env_var(ENV_PORT)?.parse()?;
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nodelay(true)?;
            Box::new(IoPeer::new(stream.try_clone()?, stream, payload))
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::attach_inherited()?);
            let want = segment_size_for(payload);
            if arena.segment_size() as usize != want {
                return Err(format!("arena segments of {} bytes, expected {want}", arena.segment_size()).into());
            }
            Box::new(ShmPeer::open(arena, 1, 0, policy, payload)?)
        }
        Peer::NetSpin | Peer::NetPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let env = ShuffleEnvironment::attach_inherited(RESPONDER_WORKER)?;
            let want = segment_size_for(payload);
            if env.arena().segment_size() as usize != want {
                return Err(format!("arena segments of {} bytes, expected {want}", env.arena().segment_size()).into());
            }
            // The requester registered its partition before it started us: the gate finds
            // it at once, while the requester's gate waits for ours.
            let writer = net_writer(&env, NET_ANSWERS, policy)?;
            let gate = net_gate(&env, NET_REQUESTS, policy)?;
            Box::new(NetPeer { writer, gate, payload, _env: env })
        }
    })
}

/// Takes ownership of the `N` fds the requester passed down in [`ENV_FDS`].
pub(crate) fn inherited_fds<const N: usize>() -> Res<[OwnedFd; N]> {
    common::inherited_fds(ENV_FDS, N)?.try_into().map_err(|_| "fd count checked above".into())
}
