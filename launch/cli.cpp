#include "launch/cli.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <sstream>

namespace q4tp::launch {
namespace {

std::int64_t parse_int(const std::string& option, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE) {
        throw UsageError("--" + option + " expects an integer, got '" + text + "'");
    }
    return value;
}

double parse_double(const std::string& option, const std::string& text) {
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(value)) {
        throw UsageError("--" + option + " expects a number, got '" + text + "'");
    }
    return value;
}

template <typename T>
std::string to_text(T value) {
    std::ostringstream oss;
    oss << value;
    return oss.str();
}

}  // namespace

ArgParser::ArgParser(std::string program, std::string synopsis, std::string description)
    : program_(std::move(program)), synopsis_(std::move(synopsis)), description_(std::move(description)) {
    add_flag("help", "show this help and exit", &help_requested_, "h");
}

ArgParser::Option& ArgParser::add(Option option) {
    options_.push_back(std::move(option));
    return options_.back();
}

ArgParser::Option* ArgParser::find(const std::string& name) {
    for (Option& option : options_) {
        if (option.name == name || (!option.short_name.empty() && option.short_name == name)) return &option;
    }
    return nullptr;
}

void ArgParser::add_string(const std::string& name, const std::string& value_name, const std::string& help,
                           std::string* target, const std::string& short_name) {
    add({name, short_name, value_name, help, target->empty() ? "" : *target, true,
         [target](const std::string& v) { *target = v; }});
}

void ArgParser::add_int(const std::string& name, const std::string& value_name, const std::string& help,
                        std::int64_t* target, const std::string& short_name) {
    add({name, short_name, value_name, help, to_text(*target), true,
         [target, name](const std::string& v) { *target = parse_int(name, v); }});
}

void ArgParser::add_double(const std::string& name, const std::string& value_name, const std::string& help,
                           double* target, const std::string& short_name) {
    add({name, short_name, value_name, help, to_text(*target), true,
         [target, name](const std::string& v) { *target = parse_double(name, v); }});
}

void ArgParser::add_flag(const std::string& name, const std::string& help, bool* target,
                         const std::string& short_name) {
    add({name, short_name, "", help, "", false, [target](const std::string&) { *target = true; }});
}

void ArgParser::add_list(const std::string& name, const std::string& value_name, const std::string& help,
                         std::vector<std::string>* target) {
    add({name, "", value_name, help + " (repeatable)", "", true,
         [target](const std::string& v) { target->push_back(v); }});
}

void ArgParser::add_positional(const std::string& name, const std::string& help, std::string* target,
                               bool required) {
    positionals_.push_back({name, help, target, required});
}

bool ArgParser::parse(int argc, char** argv) {
    std::size_t next_positional = 0;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::fputs(help().c_str(), stdout);
            return false;
        }
        if (arg.size() > 1 && arg[0] == '-' && arg != "-") {
            std::string name = arg.substr(arg[1] == '-' ? 2 : 1);
            std::string value;
            bool has_inline_value = false;
            if (const auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name = name.substr(0, eq);
                has_inline_value = true;
            }
            Option* option = find(name);
            if (!option) throw UsageError("unknown option '" + arg + "' (see --help)");
            if (option->takes_value) {
                if (!has_inline_value) {
                    if (i + 1 >= argc) throw UsageError("option --" + option->name + " needs a value");
                    value = argv[++i];
                }
            } else if (has_inline_value) {
                throw UsageError("option --" + option->name + " takes no value");
            }
            option->set(value);
            option->seen = true;
            continue;
        }
        if (next_positional >= positionals_.size()) throw UsageError("unexpected argument '" + arg + "'");
        *positionals_[next_positional++].target = arg;
    }
    for (std::size_t p = next_positional; p < positionals_.size(); ++p) {
        if (positionals_[p].required) throw UsageError("missing argument " + positionals_[p].name + " (see --help)");
    }
    return true;
}

bool ArgParser::given(const std::string& name) const {
    for (const Option& option : options_) {
        if (option.name == name) return option.seen;
    }
    return false;
}

std::string ArgParser::help() const {
    std::ostringstream out;
    out << "usage: " << program_ << " " << synopsis_ << "\n\n" << description_ << "\n";
    if (!positionals_.empty()) {
        out << "\narguments:\n";
        for (const Positional& p : positionals_) out << "  " << std::left << std::setw(28) << p.name << p.help << "\n";
    }
    out << "\noptions:\n";
    for (const Option& option : options_) {
        std::ostringstream flag_text;
        if (option.short_name.empty()) flag_text << "    ";
        else flag_text << "-" << option.short_name << ", ";
        flag_text << "--" << option.name;
        if (option.takes_value) flag_text << " " << option.value_name;
        const std::string flag = flag_text.str();
        out << "  " << std::left << std::setw(28) << flag;
        if (flag.size() >= 28) out << "\n  " << std::setw(28) << "";
        out << option.help;
        if (!option.default_text.empty()) out << " (default: " << option.default_text << ")";
        out << "\n";
    }
    if (!epilog_.empty()) out << "\n" << epilog_ << "\n";
    return out.str();
}

}  // namespace q4tp::launch
