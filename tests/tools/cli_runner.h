// Runs a tool binary with arguments, capturing its exit status, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace q4tp::test {

struct ToolRun {
    int exit_code = -1;       //!< -1 when the process died from a signal (a crash)
    int signal = 0;
    std::string out, err;
    //! stderr lines, without the loading chatter (lines starting "[q4tp]")
    std::vector<std::string> error_lines() const {
        std::vector<std::string> lines;
        std::istringstream in(err);
        for (std::string line; std::getline(in, line);) {
            if (line.rfind("[q4tp]", 0) != 0) lines.push_back(line);
        }
        return lines;
    }
};

inline std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

inline ToolRun run_tool(const std::string& binary, const std::vector<std::string>& args) {
    const auto dir = std::filesystem::temp_directory_path();
    const auto out_path = dir / ("q4tp_cli_out_" + std::to_string(::getpid()));
    const auto err_path = dir / ("q4tp_cli_err_" + std::to_string(::getpid()));
    std::string command = shell_quote(binary);
    for (const auto& a : args) command += " " + shell_quote(a);
    command += " >" + shell_quote(out_path.string()) + " 2>" + shell_quote(err_path.string()) + " </dev/null";
    const int status = std::system(command.c_str());
    ToolRun run;
    if (WIFEXITED(status)) {
        run.exit_code = WEXITSTATUS(status);
        // The shell reports a signal-killed child as 128 + signal.
        if (run.exit_code > 128) {
            run.signal = run.exit_code - 128;
            run.exit_code = -1;
        }
    } else if (WIFSIGNALED(status)) {
        run.signal = WTERMSIG(status);
    }
    auto slurp = [](const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    };
    run.out = slurp(out_path);
    run.err = slurp(err_path);
    std::filesystem::remove(out_path);
    std::filesystem::remove(err_path);
    return run;
}

}  // namespace q4tp::test
