// Progress reporting for long work: a single updating line on a TTY (rate, ETA, extra fields
// such as the loss), nothing at all otherwise, so CI logs and --json output stay clean.
//
// Why: users watch long runs interactively, while CI needs machine-readable output only. The
// decision is made once (stderr is a TTY and the caller did not ask for --json/--quiet), and
// redraws are throttled to ~10 Hz so progress never costs measurable time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace shrink::core {

class Progress {
 public:
  /// `unit` names what is counted ("tok", "seq", "merges"); total 0 means unknown.
  Progress(std::string label, uint64_t total, std::string unit, bool enabled);
  ~Progress();
  /// Report `done` units so far; `extra` is appended (e.g. "loss 3.21").
  void update(uint64_t done, const std::string& extra = "");
  /// Draw the final state and end the line.
  void finish(const std::string& extra = "");
  /// True when stderr is a terminal (the default for `enabled`).
  static bool stderr_is_tty();

 private:
  void draw(uint64_t done, const std::string& extra, bool final);
  std::string label_, unit_;
  uint64_t total_;
  bool enabled_, finished_ = false;
  uint64_t last_done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

/// "1.23k", "4.56M" style number.
std::string human_count(double v);
/// "1:02:03" / "2:03" duration.
std::string human_duration(double seconds);
/// "12.3 MiB" style size.
std::string human_bytes(double bytes);

}  // namespace shrink::core
