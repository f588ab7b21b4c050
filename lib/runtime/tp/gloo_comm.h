// A tensor-parallel group (runtime/tp_comm.h) on Gloo's TCP transport.
//
// Rendezvous: the torchrun variables of core::dist_env_read (MASTER_ADDR, MASTER_PORT, RANK,
// WORLD_SIZE), as the data-parallel trainer reads them. Rank 0 serves a small key-value store over
// HTTP (cpp-httplib) at MASTER_ADDR:MASTER_PORT; every rank publishes its Gloo address there and
// Gloo connects the full mesh. Why HTTP and not a TCP store of our own: Debian's Gloo ships only
// file, in-process and Redis stores, LibTorch's TCPStore must stay out of the runtime, and a
// well-kept HTTP library keeps the wire format standard. GLOO_SOCKET_IFNAME picks the interface
// Gloo binds to (as with PyTorch); otherwise 127.0.0.1 when MASTER_ADDR is a loopback address,
// else this host's name.
#pragma once

#include <memory>

#include "core/launch.h"
#include "core/status.h"
#include "runtime/tp_comm.h"

namespace shrink::runtime {

/// Join the group of env.world_size ranks. timeout_s bounds the rendezvous and every collective
/// (--dist-timeout): a peer that died or stalls makes the others fail within it. Errors
/// (kInternal / kIoError) name the step and the peer where known.
/// transport: "gloo" (TCP; any machines), "shm" (a shared-memory segment; every rank on this
/// machine) or "auto" (shm when LOCAL_WORLD_SIZE == WORLD_SIZE, else gloo).
Result<std::shared_ptr<TpComm>> tp_join(const core::DistEnv& env, double timeout_s,
                                        const std::string& transport = "auto");

}  // namespace shrink::runtime
