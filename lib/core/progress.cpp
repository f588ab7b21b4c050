// Progress line rendering. See progress.h.
#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace shrink::core {

Progress::Progress(std::string label, uint64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (enabled_ && !finished_) finish();
}

bool Progress::stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

void Progress::update(uint64_t done, const std::string& extra) {
  last_done_ = done;
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done, extra, false);
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw(total_ ? total_ : last_done_, extra, true);
}

void Progress::draw(uint64_t done, const std::string& extra, bool final) {
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double rate = secs > 0 ? double(done) / secs : 0.0;
  std::string line = "\r\033[K" + label_ + " ";
  if (total_) {
    char pct[16];
    std::snprintf(pct, sizeof pct, "%3.0f%% ", 100.0 * double(done) / double(total_));
    line += pct + human_count(double(done)) + "/" + human_count(double(total_));
  } else {
    line += human_count(double(done));
  }
  line += " " + unit_ + "  " + human_count(rate) + " " + unit_ + "/s";
  if (final) {
    line += "  " + human_duration(secs);
  } else if (total_ && rate > 0 && done <= total_) {
    line += "  ETA " + human_duration(double(total_ - done) / rate);
  }
  if (!extra.empty()) line += "  " + extra;
  if (final) line += "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

std::string human_count(double v) {
  const char* suffix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(v) >= 1000.0 && i < 4) {
    v /= 1000.0;
    ++i;
  }
  char buf[32];
  if (i == 0 && v == std::floor(v)) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.*f%s", v < 10 ? 2 : v < 100 ? 1 : 0, v, suffix[i]);
  return buf;
}

std::string human_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  long t = long(std::lround(s));
  char buf[32];
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

std::string human_bytes(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024.0 && i < 4) {
    b /= 1024.0;
    ++i;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, i ? "%.1f %s" : "%.0f %s", b, unit[i]);
  return buf;
}

}  // namespace shrink::core
