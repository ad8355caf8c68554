//! A small command-line parser for the q4tp tools: GNU-style long options (--name value or --name=value),
//! short aliases, repeatable options, positionals, and a generated --help. Bad usage throws UsageError,
//! which each tool's main turns into one line and exit code 2.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace q4tp::launch {

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class ArgParser {
public:
    ArgParser(std::string program, std::string synopsis, std::string description);

    void add_string(const std::string& name, const std::string& value_name, const std::string& help,
                    std::string* target, const std::string& short_name = "");
    void add_int(const std::string& name, const std::string& value_name, const std::string& help,
                 std::int64_t* target, const std::string& short_name = "");
    void add_double(const std::string& name, const std::string& value_name, const std::string& help, double* target,
                    const std::string& short_name = "");
    void add_flag(const std::string& name, const std::string& help, bool* target, const std::string& short_name = "");
    //! Each occurrence appends a value.
    void add_list(const std::string& name, const std::string& value_name, const std::string& help,
                  std::vector<std::string>* target);
    void add_positional(const std::string& name, const std::string& help, std::string* target, bool required);
    //! Text printed after the options in --help (examples, notes).
    void set_epilog(std::string epilog) { epilog_ = std::move(epilog); }

    //! Parses argv; returns false when --help was given (help already printed to stdout).
    bool parse(int argc, char** argv);
    //! True when the option was given on the command line (not just defaulted).
    bool given(const std::string& name) const;
    std::string help() const;
    const std::string& program() const { return program_; }

private:
    struct Option {
        std::string name, short_name, value_name, help, default_text;
        bool takes_value = true;
        std::function<void(const std::string&)> set;
        bool seen = false;
    };
    struct Positional {
        std::string name, help;
        std::string* target;
        bool required;
    };
    Option& add(Option option);
    Option* find(const std::string& name);

    std::string program_, synopsis_, description_, epilog_;
    std::vector<Option> options_;
    std::vector<Positional> positionals_;
    bool help_requested_ = false;  //!< --help is handled in parse(); the flag only documents it
};

}  // namespace q4tp::launch
